"""The toy world: a procedurally generated talking-person dataset whose ground truth is measurable.

No real human video or pretrained weights are available, so this stands in for the paper's
human-centric data (OmniHuman-1 sections 3 and 4.1) and travels the real path: mp4 + wav + keypoints +
`manifest.jsonl` -> featurization -> TFDS -> training -> sampler -> evaluation.

- `identity`: head shape, skin, hair, clothing, background, held object, voice; captions naming them.
- `speech`: speech-like 16 kHz mono audio (syllables, voiced harmonics, formants, pauses).
- `motion`: mouth opening following the audio envelope with a 1-frame lag, smooth gestures loosely
  following syllable onsets, camera motion, and COCO-WholeBody 133 keypoints in pixels.
- `render`: numpy rasterization; mp4 (libx264, yuv420p) and wav (PCM 16) files.
- `generate`: the dataset writer and CLI (`python -m data_pipeline.toyworld.generate --help`).
- `measure`: lip sync, hand pose error, identity PSNR/SSIM and motion amplitude, read from pixels.

Measurability: the mouth interior is magenta, the person's left hand green and right hand cyan
(`measure.RESERVED_COLOURS`); no other colour comes within `measure.COLOUR_FAR` of them.

Filters (manifest scores, defaults as in the paper's 13%): `LIPSYNC_THRESHOLD` = 5.0 (lipsync is 10 x
the mouth/audio-envelope correlation, so >= 5.0 means correlation >= 0.5) and
`POSE_VISIBILITY_THRESHOLD` = 0.8 (fraction of upper-body and hand keypoints seen). By default 36% of
clips have clean audio and 36% clean pose, independently, so about 13% pass both. The thresholds are
`data_pipeline.toyworld.generate.LIPSYNC_THRESHOLD` and `.POSE_VISIBILITY_THRESHOLD`.
"""

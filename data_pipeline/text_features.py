"""Caption embeddings: text-encoder hidden states from a local model folder.

OmniHuman-1 keeps the MMDiT's text branch (section 3.1: "The text condition is retained as in the
MMDiT text branch"); the public MMDiT video models encode captions with a T5 / UMT5 encoder (Wan)
or a decoder LLM's hidden states (HunyuanVideo). This module loads any of them from a local folder
(`T5EncoderModel`, `UMT5EncoderModel`, or `AutoModel` for other types) with the tokenizer saved in
the same folder, and returns the last hidden state padded / truncated to `max_len` tokens with its
validity mask. Padding positions are zeroed; an empty caption keeps its first token valid.
Nothing is downloaded and no remote code runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class TextEncoder:
    """caption -> (embedding (max_len, D) float32, mask (max_len,) bool)."""

    def __init__(self, model_dir: str | Path, max_len: int, *, device: str = "cpu"):
        import torch
        import transformers

        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"text encoder folder {model_dir} has no config.json; save the encoder and its tokenizer "
                "there with save_pretrained (models are never downloaded here)"
            )
        if max_len < 1:
            raise ValueError(f"text max_len must be >= 1, got {max_len}")
        model_type = json.loads(config_path.read_text()).get("model_type", "")
        model_cls = {
            "t5": transformers.T5EncoderModel,
            "umt5": transformers.UMT5EncoderModel,
        }.get(model_type, transformers.AutoModel)
        kwargs = dict(local_files_only=True, trust_remote_code=False)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), **kwargs)
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(
                    f"tokenizer in {model_dir} has neither a pad nor an eos token; set pad_token"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model_cls.from_pretrained(str(model_dir), **kwargs).to(device)
        self.model.eval()
        self.torch, self.device, self.max_len = torch, device, max_len
        config = self.model.config
        self.dim = int(getattr(config, "hidden_size", None) or config.d_model)

    def __call__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_batch([caption])[0]

    def encode_batch(self, captions: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        tokens = self.tokenizer(
            captions,
            padding="max_length",
            truncation=True,
            max_length=self.max_len,
            return_tensors="pt",
        )
        mask = tokens["attention_mask"].to(self.device)  # (B, max_len)
        mask[:, 0] = 1  # an empty caption keeps one valid token, like the null text of docs/design.md
        with self.torch.inference_mode():
            out = self.model(input_ids=tokens["input_ids"].to(self.device), attention_mask=mask)
        hidden = out.last_hidden_state.float() * mask[..., None].float()  # (B, max_len, D)
        hidden_np, mask_np = hidden.cpu().numpy().astype(np.float32), mask.cpu().numpy().astype(bool)
        return [(hidden_np[i], mask_np[i]) for i in range(len(captions))]

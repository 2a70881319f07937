"""ecomatch: batch compliance scanner for e-commerce catalogues."""
from setuptools import find_packages, setup

BEAM = "apache-beam==2.77.0"  # the worker container must carry exactly this version

setup(
    name="ecomatch",
    version="0.1.0",
    description="Finds catalogue listings whose photo contradicts their text, attribute by attribute.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ecomatch_model", "ecomatch_model.*", "transforms", "transforms.*",
                                    "pipelines", "pipelines.*"]),
    package_data={"ecomatch_model": ["models/*/*"]},
    # Per-epoch training logs belong to the run (docs/training/), not to the installed model.
    exclude_package_data={"ecomatch_model": ["models/*/train_log*.jsonl", "models/*/train_state/*"]},
    include_package_data=True,
    install_requires=[
        BEAM,
        "torch>=2.1",
        "numpy>=1.24",
        "pillow>=10",
        "pyarrow>=14",
        "fsspec>=2023.6",
        "gcsfs>=2023.6",
        "safetensors>=0.4",
        "tomli>=1.1; python_version < '3.11'",   # training recipes (tomllib from Python 3.11 on)
    ],
    extras_require={
        # DataflowRunner's API client, pinned as apache-beam[gcp] pins it: tests/test_infra_job.py
        # builds a Dataflow job description offline.
        "dev": ["pytest>=8", "hypothesis>=6", "gcp-storage-emulator>=2024.8",
                "google-cloud-dataflow-client>=0.13.0,<0.14.0"],
        "gcp": [BEAM.replace("==", "[gcp]==")],
    },
    entry_points={"console_scripts": ["ecomatch=ecomatch_model.cli:main"]},
)

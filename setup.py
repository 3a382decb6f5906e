from setuptools import Extension, find_packages, setup

# Dagster packages move in lock-step: core 1.13.x pairs with libraries 0.29.x of the same patch.
# An unpinned dagster-aws next to a newer core resolves to an ancient, broken 0.11.x.
DAGSTER = "1.13.27"
DAGSTER_LIBS = "0.29.27"

# The local stand-ins (ingest_pipeline/standins: simulator, moto server, fault proxy) for the
# demo, `make dev` and the tests; a production image installs none of it. The simulator and the
# fault proxy run on aiohttp, numpy and pyarrow, which the product needs anyway.
STANDINS = ["moto[server]>=5.0"]

setup(
    name="ingest_pipeline",
    version="0.1.0",
    description="Binance spot market data -> S3 bronze / Kinesis / silver features, run by Dagster",
    python_requires=">=3.11",
    packages=find_packages(exclude=["ingest_pipeline_tests*"]),
    package_data={"ingest_pipeline": ["config/*.yaml"]},
    # The archive's bulk rows written straight to JSON lines (binance/archive_csv.py says why).
    ext_modules=[
        Extension(
            "ingest_pipeline.binance._archive_rows",
            ["ingest_pipeline/binance/_archive_rows.c"],
        )
    ],
    install_requires=[
        f"dagster=={DAGSTER}",
        "requests>=2.31",
        "aiohttp>=3.9",
        "boto3>=1.34",
        "orjson>=3.9",
        "pandas>=2.1",
        "numpy>=1.26",
        "pyarrow>=15",
        "pyyaml>=6",
        "prometheus-client>=0.20",
    ],
    extras_require={
        # What deploy/dagster.yaml needs on top: Postgres instance storage, the ECS run
        # launcher. The code never imports dagster_aws (see defs/resources.py).
        "deploy": [f"dagster-postgres=={DAGSTER_LIBS}", f"dagster-aws=={DAGSTER_LIBS}"],
        "standins": STANDINS,
        "dev": [
            *STANDINS,
            f"dagster-webserver=={DAGSTER}",
            f"dagster-postgres=={DAGSTER_LIBS}",
            # The deployment tests (the ECS run launcher) and the S3 bound test's comparison.
            f"dagster-aws=={DAGSTER_LIBS}",
            # Drives Debian's chromium through its chromedriver (never downloads a browser).
            "selenium>=4.20",
            "pytest>=8",
            "pytest-timeout>=2.2",
            "hypothesis>=6.100",
            "ruff>=0.6",
            # `make lint`: the walls between layers (.importlinter) and types over the core.
            "import-linter>=2.0",
            "mypy>=1.10",
        ],
    },
    entry_points={"console_scripts": ["ingest-pipeline=ingest_pipeline.cli:main"]},
)

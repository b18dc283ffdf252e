# The datamon image (docs/kubernetes.md): the CLI with PostgreSQL, S3, GCS, FUSE and Dask support.
#   docker build -t datamon .
#   docker run --rm datamon --help
FROM python:3.11-slim

# FUSE for `datamon bundle mount` (needs /dev/fuse and CAP_SYS_ADMIN at run time)
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3 libfuse3-3 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY datamon ./datamon
RUN pip install --no-cache-dir ".[postgres,s3,gcs,fuse,dask]" && rm -rf /src

# Contexts, caches and the stat cache live here; mount a volume to keep the chunk cache.
ENV DATAMON_HOME=/var/lib/datamon
RUN useradd --create-home --uid 10001 datamon && mkdir -p /var/lib/datamon && chown datamon /var/lib/datamon
USER datamon
WORKDIR /home/datamon
ENTRYPOINT ["datamon"]
CMD ["--help"]

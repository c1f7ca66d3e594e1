# tiergate gateway image. CPU by default; for a CUDA base:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t tiergate:cuda .
# Run: docker run -p 8080:8080 -v $PWD/tiergate-quickstart:/work tiergate:latest
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# optional: a folder of wheels mounted into the build (buildah bud -v /opt/wheels:/wheels:ro), for hosts whose
# torch wheel lies on disk instead of behind TORCH_INDEX; pip reads it from the environment
ARG PIP_FIND_LINKS
# optional: a CA bundle for a TLS-intercepting proxy in front of the package index, mounted the same way
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
# a CUDA base brings no Python of its own; the slim Python base has one (and this is a no-op there)
RUN command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/tiergate
ENV PATH=/opt/tiergate/bin:$PATH
# torch first, from the index the build argument names: a bare requirement could pull a CUDA build of several GB
RUN pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tiergate ./tiergate
RUN pip install . && python -c "import tiergate.gateway.app"

# -------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/tiergate/bin:$PATH TIERGATE_HOME=/work/.tiergate
RUN command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*)
RUN useradd --create-home --uid 10001 tiergate && mkdir -p /work && chown tiergate /work
COPY --from=build /opt/tiergate /opt/tiergate
USER tiergate
WORKDIR /work
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
CMD ["tiergate", "serve", "--config", "/work/tiergate.yaml", "--host", "0.0.0.0", "--port", "8080"]

# edgeprune toolchain: CPU-only torch, all extras (ONNX, LiteRT, litert-torch), SSH/ADB clients for devices.
#   docker build -t edgeprune .
#   docker run --rm -v "$PWD/out:/work/out" edgeprune compress --example lenet5 -o /work/out
FROM python:3.11-slim-bookworm

# The CPU wheel index keeps torch free of CUDA packages; constraints.txt pins the version.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# gcc builds the CABAC C extension; ssh/adb clients reach the target devices.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev openssh-client adb \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/edgeprune
COPY constraints.txt pyproject.toml setup.py README.md ./
COPY edgeprune ./edgeprune
COPY runtime_bench ./runtime_bench
COPY devices ./devices
RUN pip install --extra-index-url "${TORCH_INDEX}" -c constraints.txt torch==2.13.0 \
    && pip install -c constraints.txt ".[tflite]"

RUN useradd --create-home --uid 10001 edgeprune
USER 10001
WORKDIR /work
ENTRYPOINT ["edgeprune"]
CMD ["--help"]

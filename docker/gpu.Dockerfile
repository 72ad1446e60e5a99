# Image for GPU nodes: Python 3.11, TensorFlow 2.21 with its CUDA libraries from pip ([gpu] extra).
#
#   docker build -f docker/gpu.Dockerfile -t conductivity-tf-gpu .
#   docker run --gpus all -v $PWD/runs:/opt/conductivity_tf/runs conductivity-tf-gpu --config gpu_node
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1
WORKDIR /opt/conductivity_tf
COPY setup.cfg pyproject.toml README.md constraints.txt ./
COPY conductivity_tf ./conductivity_tf
COPY data ./data
# the pinned versions CI tested, except TensorFlow's CPU build which [gpu] replaces
# and the solver's numba kernels compiled into the image, not in every container it starts
RUN grep -v -i -E "^tensorflow(_cpu|-cpu)?==" constraints.txt > /tmp/constraints-gpu.txt \
 && python3 -m pip install --no-cache-dir -c /tmp/constraints-gpu.txt ".[gpu]" \
 && python3 -c "from conductivity_tf import kernels; kernels.compile_kernels()"

ENTRYPOINT ["python3", "-m", "conductivity_tf.train"]
CMD []

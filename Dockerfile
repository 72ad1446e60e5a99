# Image for Graphcore IPU servers and PODs: Graphcore's TensorFlow 2 image (Poplar SDK, TensorFlow 2.6.3,
# its Keras 2.6 and ipu_tensorflow_addons) with conductivity_tf installed with the [ipu] extra.
#
#   docker build -t conductivity-tf-ipu .                                  # or --build-arg BASE_IMAGE=...
#   gc-docker -- -ti conductivity-tf-ipu                                   # PCIe IPU servers
#   docker run --ulimit memlock=-1:-1 --net=host --cap-add=IPC_LOCK --device=/dev/infiniband/ --ipc=host \
#       -e IPUOF_VIPU_API_HOST -e IPUOF_VIPU_API_PARTITION_ID conductivity-tf-ipu          # IPU-PODs
#
# The default command trains the embedded default run on one IPU; pass a preset and overrides after the image
# name instead, e.g. `... conductivity-tf-ipu --config ipu_pod16 train.epochs=10`.
ARG BASE_IMAGE=graphcore/tensorflow:2
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    TF_POPLAR_FLAGS=--executable_cache_path=/tmp/conductivity_tf_executables

WORKDIR /opt/conductivity_tf
COPY setup.cfg pyproject.toml README.md ./
COPY conductivity_tf ./conductivity_tf
COPY data ./data
# [ipu] adds nothing: TensorFlow and Keras come from the SDK in the base image and must not be replaced.
# The solver's numba kernels are compiled into the image, not in every container (and every worker) it starts.
RUN python3 -m pip install --no-cache-dir ".[ipu]" \
 && python3 -c "from conductivity_tf import kernels; kernels.compile_kernels()"

ENTRYPOINT ["python3", "-m", "conductivity_tf.train"]
CMD ["hardware.kind=ipu"]

# DROID-SLAM worker environment for genmocap's camera.backend=droid.
#
# DROID-SLAM compiles CUDA extensions against one exact torch/CUDA pair, so it lives in its own Python
# environment and genmocap runs it as a separate process (stages/camera_droid.py). Compiling takes 10-20 min.
#
#   docker build -f docker/droid.Dockerfile -t genmocap-droid .      (with droid.pth beside this file)
#   genmocap run ... --set camera.backend=droid --set camera.droid.python=/opt/droid-venv/bin/python
# or keep camera.backend=auto and add --set camera.droid.in_auto=true (static shots keep the exact static camera).
FROM nvidia/cuda:12.4.1-devel-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends git python3.11 python3.11-venv \
      python3.11-dev build-essential ninja-build libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/droid-venv
ENV PATH=/opt/droid-venv/bin:$PATH
# torch's CUDA major version must match nvcc's (12.x here); upstream DROID-SLAM is tested up to torch 2.7
RUN pip install --no-cache-dir torch==2.7.1 torchvision==0.22.1 --index-url https://download.pytorch.org/whl/cu124 \
 && pip install --no-cache-dir numpy opencv-python-headless scipy tqdm
RUN git clone --recursive https://github.com/princeton-vl/DROID-SLAM.git /opt/DROID-SLAM
WORKDIR /opt/DROID-SLAM
# compute capabilities you deploy on: 8.0 A100, 8.6 A10/RTX 30xx, 8.9 L4/L40, 9.0 H100/H200
ENV TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0" MAX_JOBS=8
# --no-build-isolation: the extensions build against the torch installed above
RUN pip install --no-cache-dir --no-build-isolation thirdparty/lietorch \
 && pip install --no-cache-dir --no-build-isolation thirdparty/pytorch_scatter \
 && pip install --no-cache-dir --no-build-isolation -e .
# droid.pth: from the link in the DROID-SLAM README (GPU workers are usually offline)
COPY droid.pth /weights/droid.pth
ENV GENMOCAP_DROID_REPO=/opt/DROID-SLAM GENMOCAP_WEIGHTS=/weights

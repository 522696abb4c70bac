"""A float32 GGUF of the bundled model, for the llama.cpp yardstick: the same weights vLLM serves.

vLLM serves the bundled Q4_1 GGUF de-quantized to float32 (limachat.serve.base). De-quantizing the
same GGUF's tensors in place, with every metadata key copied, gives llama.cpp exactly those weights
(llama.cpp's own Q/K row order included, since nothing is permuted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_f32(source: Path, target: Path) -> Path:
    import gguf
    from gguf.quants import dequantize

    if target.is_file():
        return target
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(gguf.LlamaFileType.ALL_F32)
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    tensors = []
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        tensors.append((t.name, data.reshape(shape)))
        writer.add_tensor_info(
            t.name, data.reshape(shape).shape, np.dtype(np.float32), data.nbytes, gguf.GGMLQuantizationType.F32
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data in tensors:
        writer.write_tensor_data(data)
    writer.close()
    tmp.rename(target)
    return target

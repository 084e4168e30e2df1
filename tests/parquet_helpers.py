"""Parquet files in the Hugging Face ImageNet layout, made from an image folder for the tests."""
from __future__ import annotations

import json
import os

from t2t.data.dataset import open_folder


def write_parquet(folder: str, out: str, *, rows_per_file: int, rows_per_group: int, hf_names: bool = True,
                  struct: bool = True, hf_layout: bool = False) -> str:
    """folder/train and folder/val as parquet files under `out`, rows in the folder's order.

    Files are out/<split>/part-K.parquet, or with `hf_layout` a Hugging Face download's
    out/data/<train|validation>-K-of-N.parquet; `struct`: the image column is the
    datasets library's {bytes, path} struct (else plain binary); `hf_names`: the class names in the schema's
    Hugging Face metadata. Returns `out`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("train", "val"):
        reader = open_folder(os.path.join(folder, split))
        rows = [(reader.read(i), os.path.basename(reader.path(i)), reader.target(i)) for i in range(len(reader))]
        starts = range(0, len(rows), rows_per_file)
        for k, start in enumerate(starts):
            part = rows[start:start + rows_per_file]
            data = [r[0] for r in part]
            image = pa.StructArray.from_arrays([pa.array(data, pa.binary()), pa.array([r[1] for r in part])],
                                               names=["bytes", "path"]) if struct else pa.array(data, pa.binary())
            table = pa.table({"image": image, "label": pa.array([r[2] for r in part], pa.int64())})
            if hf_names:
                features = {"image": {"_type": "Image"}, "label": {"names": reader.classes, "_type": "ClassLabel"}}
                table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
            hf_split = {"train": "train", "val": "validation"}[split]
            path = os.path.join(out, "data", f"{hf_split}-{k:05d}-of-{len(starts):05d}.parquet") if hf_layout \
                else os.path.join(out, split, f"part-{k:03d}.parquet")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(table, path, row_group_size=rows_per_group)
    return out

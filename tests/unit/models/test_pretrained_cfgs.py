"""The released weights are listed by timm with their origin, description and paper; nothing is downloaded."""
import pytest
import timm
import torch

import t2t  # noqa: F401  (registers the models)
from t2t.models.t2t_vit import PAPER, RELEASE_FILES, RELEASE_PAGE


def test_list_pretrained_lists_the_releases():
    assert set(timm.list_pretrained("t2t_vit*")) == set(RELEASE_FILES)


@pytest.mark.parametrize("tag", sorted(RELEASE_FILES))
def test_release_cfg_carries_origin_description_and_paper(tag):
    cfg = timm.models.get_pretrained_cfg(tag)
    assert cfg.origin_url == RELEASE_PAGE == "https://github.com/yitu-opensource/T2T-ViT/releases"
    assert cfg.paper_ids == "arXiv:2101.11986" and cfg.paper_name == PAPER
    top1 = RELEASE_FILES[tag].split("_")[0]
    assert f"top-1 {top1}%" in cfg.description and RELEASE_FILES[tag] in cfg.description
    # the weights come from a file only: no URL, no hub id to download from
    assert cfg.file == RELEASE_FILES[tag] and not cfg.url and not cfg.hf_hub_id


def test_pretrained_true_reads_the_release_file_and_downloads_nothing(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_download, raising=False)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_download, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises((FileNotFoundError, RuntimeError)) as error:  # the file is not in the working folder
        timm.create_model("t2t_vit_7.in1k", pretrained=True)
    assert "download" not in str(error.value)
    source = timm.create_model("t2t_vit_7", num_classes=1000)
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / RELEASE_FILES["t2t_vit_7.in1k"])
    model = timm.create_model("t2t_vit_7.in1k", pretrained=True)
    assert torch.equal(model.head.weight, source.head.weight)

"""Loading and running the teacher: every file layout, frozen weights, resizing, the resume identity check."""
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

import t2t  # noqa: F401
from t2t.engine.distill import DistillationLoss, soft_cross_entropy
from t2t.engine.teacher import TeacherError, check_same_teacher, file_identity, load_teacher

SMALL = dict(num_classes=5, img_size=32)


def _same_outputs(teacher, model, size=32):
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(teacher(x), model.eval()(x))


def test_run_checkpoint_names_its_model(tmp_path):
    model = timm.create_model("t2t_vit_7", **SMALL).eval()
    ema = timm.create_model("t2t_vit_7", **SMALL).eval()
    torch.save({"arch": "t2t_vit_7", "model": model.state_dict(), "state_dict_ema": ema.state_dict(),
                "config": {"model": {"name": "t2t_vit_7"}}}, tmp_path / "last.pth")
    teacher = load_teacher(str(tmp_path / "last.pth"), num_classes=5, img_size=32)
    assert teacher.name == "t2t_vit_7"
    _same_outputs(teacher, ema)  # the EMA weights, as the release files are evaluated


def test_official_release_layout(tmp_path):
    model = timm.create_model("t2t_vit_7", **SMALL)
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in model.state_dict().items()}, "arch": "T2t_vit_7",
                "epoch": 309}, tmp_path / "71.7_T2T_ViT_7.pth.tar")
    _same_outputs(load_teacher(str(tmp_path / "71.7_T2T_ViT_7.pth.tar"), num_classes=5, img_size=32), model)


def test_torchvision_state_dict_into_timm_model(tmp_path):
    model = torchvision.models.resnet18(num_classes=5).eval()
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    teacher = load_teacher(str(tmp_path / "resnet18.pth"), model_name="resnet18", num_classes=5, img_size=32)
    _same_outputs(teacher, model)


def test_safetensors_file(tmp_path):
    model = timm.create_model("t2t_vit_7", **SMALL)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    _same_outputs(load_teacher(str(tmp_path / "w.safetensors"), model_name="t2t_vit_7", num_classes=5, img_size=32),
                  model)


@pytest.mark.parametrize("case, match", [
    ("no_name", "records no model name"), ("classes", "classifies 7 classes"), ("shape", "does not fit"),
    ("missing", "no such file"), ("unknown", "not a model timm knows")])
def test_bad_teachers_are_refused_in_one_line(tmp_path, case, match):
    model = timm.create_model("t2t_vit_7", **SMALL)
    path = tmp_path / "t.pth"
    kwargs = dict(num_classes=5, img_size=32)
    if case == "classes":
        model = timm.create_model("t2t_vit_7", num_classes=7, img_size=32)
        kwargs["model_name"] = "t2t_vit_7"
    if case == "shape":
        kwargs["model_name"] = "t2t_vit_10"
    if case == "unknown":
        kwargs["model_name"] = "no_such_net"
    torch.save(model.state_dict(), path)
    with pytest.raises(TeacherError, match=match) as info:
        load_teacher(str(path if case != "missing" else tmp_path / "absent.pth"), **kwargs)
    assert "\n" not in str(info.value)


def test_teacher_is_resized_to_its_own_input(tmp_path):
    model = timm.create_model("t2t_vit_7", num_classes=5, img_size=48).eval()
    torch.save(model.state_dict(), tmp_path / "t48.pth")
    teacher = load_teacher(str(tmp_path / "t48.pth"), model_name="t2t_vit_7", num_classes=5, img_size=48)
    x = torch.randn(2, 3, 32, 32)
    want = model(F.interpolate(x, size=(48, 48), mode="bicubic", align_corners=False))
    torch.testing.assert_close(teacher(x), want)


def test_teacher_weights_never_change_while_the_student_trains(tmp_path):
    model = timm.create_model("t2t_vit_7", **SMALL)
    torch.save(model.state_dict(), tmp_path / "t.pth")
    teacher = load_teacher(str(tmp_path / "t.pth"), model_name="t2t_vit_7", num_classes=5, img_size=32)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    student = timm.create_model("t2t_vit_7_distilled", depth=1, **SMALL)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    loss_fn = DistillationLoss(soft_cross_entropy, teacher, kind="soft", alpha=0.5, tau=2.0)
    student.train()
    for _ in range(3):
        x = torch.randn(4, 3, 32, 32)
        loss = loss_fn(student(x), torch.full((4, 5), 0.2), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not teacher.model.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.model.parameters())
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_resume_with_another_teacher_file_is_refused(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"x": torch.zeros(2)}, a)
    torch.save({"x": torch.ones(2)}, b)
    check_same_teacher(file_identity(str(a)), file_identity(str(a)), "last.pth")
    with pytest.raises(TeacherError) as info:
        check_same_teacher(file_identity(str(a)), file_identity(str(b)), "last.pth")
    assert str(a) in str(info.value) and str(b) in str(info.value)
    with pytest.raises(TeacherError, match="without a teacher"):
        check_same_teacher(None, file_identity(str(b)), "last.pth")

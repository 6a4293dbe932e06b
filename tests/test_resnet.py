"""ResNet18 structure and equality with a PyTorch ResNet18 after weight conversion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.models.convert import load_pretrained, torch_resnet_to_flax
from rsjax.models.resnet import ResNet, ResNet18, fc_kernel_init


def test_resnet18_shapes_and_parameter_count():
    model = ResNet18(dim=16, num_classes=5)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    n = sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
    # torchvision resnet18 without fc: 11,176,512 parameters; plus FC1 512x16+16, FC2 16x5+5
    assert n == 11_176_512 + 512 * 16 + 16 + 16 * 5 + 5
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert out["pooled"].shape == (2, 512) and out["embedding"].shape == (2, 16)
    assert out["logits"].shape == (2, 5)


@pytest.fixture(scope="module")
def tiny():
    model = ResNet(stage_sizes=(1, 1), num_filters=4, dim=6, num_classes=3)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    with jax.threefry_partitionable(False):     # compiles the random init ~5x faster on CPU
        variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
    return model, variables, x


def test_embedding_is_normalised_fc1_and_logits_from_unnormalised(tiny):
    model, variables, x = tiny
    out = model.apply(variables, x, train=False)
    v = np.asarray(out["v"])
    np.testing.assert_allclose(out["embedding"], v / np.linalg.norm(v, axis=1, keepdims=True), rtol=1e-5)
    fc2 = variables["params"]["fc2"]
    np.testing.assert_allclose(out["logits"], v @ np.asarray(fc2["kernel"]) + np.asarray(fc2["bias"]),
                               rtol=1e-5, atol=1e-5)
    no_head = ResNet(stage_sizes=(1, 1), num_filters=4, dim=6, num_classes=0)
    params = {k: v for k, v in variables["params"].items() if k != "fc2"}
    out2 = no_head.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)
    assert "logits" not in out2
    np.testing.assert_allclose(out2["embedding"], out["embedding"], rtol=1e-6)


def test_train_mode_uses_batch_statistics(tiny):
    model, variables, x = tiny
    out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(mutated) == {"batch_stats"}
    before = np.asarray(variables["batch_stats"]["bn1"]["mean"])
    after = np.asarray(mutated["batch_stats"]["bn1"]["mean"])
    assert not np.allclose(before, after)


def test_fc_kaiming_normal_init(tiny):
    _, variables, _ = tiny
    w = np.asarray(fc_kernel_init(jax.random.key(0), (512, 256)))
    assert abs(w.std() - np.sqrt(2.0 / 512)) < 0.02 * np.sqrt(2.0 / 512)
    assert abs(w.mean()) < 1e-3
    fc1 = variables["params"]["fc1"]
    assert np.all(np.abs(np.asarray(fc1["bias"])) <= 1 / np.sqrt(fc1["kernel"].shape[0]))


def _zeros_like_init(model, x):
    """Variables of the right shapes without running the (slow to compile) random init."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


# ---------------------------------------------------------------------------------------------
# A PyTorch ResNet18 written out here (torchvision is not installed), with torchvision's names.


def _torch_resnet18():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    from benchmarks.torch_resnet import BasicBlock   # torchvision's block, its parameter names

    class TorchResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for i, planes in enumerate((64, 128, 256, 512)):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, stride),
                                                             BasicBlock(planes, planes)))
                inplanes = planes
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 1000)

        def features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(self.avgpool(x), 1)

    class AuthorsResNet18Cls(nn.Module):
        """The SNCA-CE authors' ResNet18_cls layout: encoder Sequential, FC1, FC2."""

        def __init__(self, backbone, dim, n_classes):
            super().__init__()
            b = backbone
            self.encoder = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2,
                                         b.layer3, b.layer4, b.avgpool)
            self.FC1 = nn.Linear(512, dim)
            self.FC2 = nn.Linear(dim, n_classes)

        def forward(self, x):
            x = self.FC1(self.encoder(x).flatten(1))
            return torch.nn.functional.normalize(x), self.FC2(x)

    torch.manual_seed(0)
    net = TorchResNet18()
    with torch.no_grad():   # non-trivial BatchNorm statistics and affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return torch, net.eval(), AuthorsResNet18Cls


def test_converted_torchvision_resnet18_matches_pytorch(tmp_path):
    torch, net, _ = _torch_resnet18()
    x = np.random.default_rng(0).normal(size=(2, 3, 40, 40)).astype(np.float32)
    with torch.no_grad():
        expected = net.features(torch.from_numpy(x)).numpy()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)

    model = ResNet18(dim=8, num_classes=4)
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    variables = load_pretrained(_zeros_like_init(model, x_nhwc), path)
    out = model.apply(variables, x_nhwc, train=False)
    np.testing.assert_allclose(out["pooled"], expected, atol=1e-4, rtol=1e-4)


def test_converted_authors_layout_matches_pytorch_heads(tmp_path):
    torch, net, AuthorsResNet18Cls = _torch_resnet18()
    cls_net = AuthorsResNet18Cls(net, dim=8, n_classes=4).eval()
    x = np.random.default_rng(1).normal(size=(2, 3, 33, 33)).astype(np.float32)
    with torch.no_grad():
        e, logits = (t.numpy() for t in cls_net(torch.from_numpy(x)))
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in cls_net.state_dict().items()}}, path)

    model = ResNet18(dim=8, num_classes=4)
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    variables = load_pretrained(_zeros_like_init(model, x_nhwc), path)
    out = model.apply(variables, x_nhwc, train=False)
    np.testing.assert_allclose(out["embedding"], e, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)


def test_conversion_rejects_mismatched_model():
    torch, net, _ = _torch_resnet18()
    small = ResNet(stage_sizes=(1, 1, 1, 1), dim=8)
    variables = _zeros_like_init(small, jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="no such entry"):
        load_pretrained(variables, net.state_dict())
    converted = torch_resnet_to_flax(net.state_dict())
    assert converted["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
    assert set(converted["batch_stats"]["layer2_0"]) == {"bn1", "bn2", "downsample_bn"}


def test_authors_classifier_of_another_class_count_keeps_fc2_initial_and_loads_the_rest(tmp_path, capsys):
    """Fine-tuning the authors' 21-class checkpoint on a 4-class dataset: FC2 starts afresh (with a
    note), every other entry is loaded; a file that is not a state_dict, or keys of another network,
    are errors naming the file and the fix."""
    torch, net, AuthorsResNet18Cls = _torch_resnet18()
    cls_net = AuthorsResNet18Cls(net, dim=8, n_classes=21).eval()
    path = tmp_path / "ckpt.pth"
    torch.save(cls_net.state_dict(), path)
    model = ResNet18(dim=8, num_classes=4)
    init = _zeros_like_init(model, jnp.zeros((1, 32, 32, 3)))
    variables = load_pretrained(init, path)
    assert capsys.readouterr().err.count("FC2 classifies 21 classes, this model 4: FC2 keeps its initial values") == 1
    np.testing.assert_array_equal(variables["params"]["fc2"]["kernel"], init["params"]["fc2"]["kernel"])
    np.testing.assert_allclose(variables["params"]["fc1"]["kernel"], cls_net.state_dict()["FC1.weight"].numpy().T)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth: not a PyTorch state_dict.*torch\.save\(model\.state_dict\(\)"):
        load_pretrained(init, tmp_path / "junk.pth")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: 'foo\.weight': not a key of a torchvision ResNet.*ResNet18"):
        load_pretrained(init, tmp_path / "other.pth")

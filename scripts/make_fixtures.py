#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for the IBN-Net crate.

The model code below is a parametrised re-statement of the authors' release
(`ibnnet`, v1.0): module structure and state_dict key
names follow the release exactly, so that released checkpoints load strictly.

Usage:  python3 scripts/make_fixtures.py      (writes tests/fixtures/)
        python3 scripts/make_fixtures.py --only NAME [NAME ...]   (those cases only)
Nothing is downloaded.
"""
import os
import re
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures")
KEYS_DIR = os.environ.get(
    "IBN_KEYS_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference_keys"),
)


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------
class IBN(nn.Module):
    """[IN | BN] on the first `half` / remaining channels (ResNet family)."""

    def __init__(self, planes, ratio=0.5):
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"IBN ratio must be in (0, 1), got {ratio}")
        self.half = int(planes * ratio)
        if not 0 < self.half < planes:
            raise ValueError(f"IBN: half={self.half} must be in (0, {planes})")
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x):
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], 1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), 1)


class DenseIBN(nn.Module):
    """[BN | IN] as used by DenseNet-IBN-a (ratio 0.4)."""

    def __init__(self, planes, ratio=0.4):
        super().__init__()
        self.half = int(planes * (1 - ratio))
        if not 0 < self.half < planes:
            raise ValueError(f"DenseIBN: half={self.half} must be in (0, {planes})")
        self.BN = nn.BatchNorm2d(self.half)
        self.IN = nn.InstanceNorm2d(planes - self.half, affine=True)

    def forward(self, x):
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], 1)
        return torch.cat((self.BN(a.contiguous()), self.IN(b.contiguous())), 1)


class SE(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        n, c = x.shape[:2]
        y = self.fc(self.avg_pool(x).view(n, c)).view(n, c, 1, 1)
        return x * y


def conv3x3(i, o, stride=1, groups=1):
    return nn.Conv2d(i, o, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(i, o, stride=1):
    return nn.Conv2d(i, o, 1, stride=stride, bias=False)


def downsample(i, o, stride):
    return nn.Sequential(conv1x1(i, o, stride), nn.BatchNorm2d(o))


# ---------------------------------------------------------------------------
# ResNet family
# ---------------------------------------------------------------------------
class BasicBlock_IBN(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, ibn=None, stride=1, downsample=None,
                 groups=1, base_width=64, se_reduction=None):
        super().__init__()
        assert groups == 1 and base_width == 64 and se_reduction is None
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = IBN(planes, 0.5) if ibn == "a" else nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.IN = nn.InstanceNorm2d(planes, affine=True) if ibn == "b" else None
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class Bottleneck_IBN(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, ibn=None, stride=1, downsample=None,
                 groups=1, base_width=64, se_reduction=None):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = IBN(width, 0.5) if ibn == "a" else nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.IN = (nn.InstanceNorm2d(planes * self.expansion, affine=True)
                   if ibn == "b" else None)
        self.se = SE(planes * self.expansion, se_reduction) if se_reduction else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers, ibn_cfg=("a", "a", "a", None),
                 widths=(64, 128, 256, 512), stem_width=64, num_classes=1000,
                 last_stride=2, groups=1, base_width=64, se_reduction=None,
                 stem_pool="padded"):
        super().__init__()
        self.inplanes = stem_width
        self.block_kw = dict(groups=groups, base_width=base_width,
                             se_reduction=se_reduction)
        self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
        if ibn_cfg[0] == "b":
            self.bn1 = nn.InstanceNorm2d(stem_width, affine=True)
        else:
            self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        if stem_pool == "ceil":  # fast-reid's stem
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        strides = (1, 2, 2, last_stride)
        for s in range(4):
            setattr(self, f"layer{s + 1}",
                    self._make_layer(block, widths[s], layers[s], strides[s], ibn_cfg[s]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        if num_classes:
            self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride, ibn):
        ds = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            ds = downsample(self.inplanes, planes * block.expansion, stride)
        layers = []
        for i in range(blocks):
            # IBN-b: only the last block of the stage gets the post-add IN.
            # As in the release, the first block never gets IBN-b, so a
            # ONE-block "b" stage gets no IN ("only the last block" of longer stages).
            # No named model has a one-block stage.
            b_ibn = None if (ibn == "b" and (i == 0 or i < blocks - 1)) else ibn
            if i == 0:
                layers.append(block(self.inplanes, planes, b_ibn, stride, ds, **self.block_kw))
                self.inplanes = planes * block.expansion
            else:
                layers.append(block(self.inplanes, planes, b_ibn, **self.block_kw))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if not self.num_classes:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------
# DenseNet family
# ---------------------------------------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, num_input, growth, bn_size, ibn):
        super().__init__()
        self.norm1 = DenseIBN(num_input, 0.4) if ibn else nn.BatchNorm2d(num_input)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.Module):
    def __init__(self, num_layers, num_input, growth, bn_size, use_ibn):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(num_input + i * growth, growth, bn_size,
                                       use_ibn and i % 3 == 0))

    def forward(self, x):
        for layer in self.children():
            x = torch.cat((x, layer(x)), 1)
        return x


class Transition(nn.Sequential):
    def __init__(self, num_input, num_output):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input, num_output, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, stride=2))


class DenseNet(nn.Module):
    def __init__(self, growth=32, block_config=(6, 12, 24, 16), num_init_features=64,
                 bn_size=4, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
        ]))
        nf = num_init_features
        for i, n in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}",
                                     DenseBlock(n, nf, growth, bn_size, i < 3))
            nf += n * growth
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(nf, nf // 2))
                nf //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(nf))
        self.classifier = nn.Linear(nf, num_classes)

    def forward(self, x):
        out = F.relu(self.features(x))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)


# ---------------------------------------------------------------------------
# Named full-size models (for the self-check)
# ---------------------------------------------------------------------------
A_CFG = ("a", "a", "a", None)
B_CFG = ("b", "b", None, None)
DEPTHS = {18: (BasicBlock_IBN, [2, 2, 2, 2]), 34: (BasicBlock_IBN, [3, 4, 6, 3]),
          50: (Bottleneck_IBN, [3, 4, 6, 3]), 101: (Bottleneck_IBN, [3, 4, 23, 3]),
          152: (Bottleneck_IBN, [3, 8, 36, 3])}
DENSE = {121: (32, [6, 12, 24, 16], 64), 169: (32, [6, 12, 32, 32], 64),
         201: (32, [6, 12, 48, 32], 64), 161: (48, [6, 12, 36, 24], 96)}


def named_model(name):
    if name.startswith("densenet"):
        g, cfg, init = DENSE[int(name[len("densenet"):].split("_")[0])]
        return DenseNet(g, cfg, init, 4, 1000)
    m = re.fullmatch(r"(se_resnet|resnext|resnet)(\d+)_ibn_([ab])", name)
    if m is None:
        raise ValueError(f"unknown model {name}")
    family, depth, ibn = m.group(1), int(m.group(2)), m.group(3)
    block, layers = DEPTHS[depth]
    cfg = A_CFG if ibn == "a" else B_CFG
    if family == "resnext":
        return ResNet(block, layers, cfg, groups=32, base_width=4)
    if family == "se_resnet":
        return ResNet(block, layers, cfg, se_reduction=16)
    return ResNet(block, layers, cfg)


EXPECTED_PARAMS = {
    "resnet18_ibn_a": 11689512, "resnet34_ibn_a": 21797672, "resnet50_ibn_a": 25557032,
    "resnet101_ibn_a": 44549160, "resnet152_ibn_a": 60192808, "resnet18_ibn_b": 11689896,
    "resnet50_ibn_b": 25558568, "resnext101_ibn_a": 44177704,
    "se_resnet101_ibn_a": 49292328, "densenet121_ibn_a": 7978856,
    "densenet169_ibn_a": 14149480,
}


def read_keys(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            key, kind, shape = line.split("\t")
            shape = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
            rows.append((key, kind, shape))
    return rows


def self_check():
    names = sorted(f[:-4] for f in os.listdir(KEYS_DIR)
                   if f.endswith(".txt") and not f.endswith(".compact.txt"))
    ok = True
    for name in names:
        with torch.device("meta"):
            m = named_model(name)
        params = {k for k, _ in m.named_parameters()}
        got = [(k, "param" if k in params else "buffer", list(v.shape))
               for k, v in m.state_dict().items()]
        want = read_keys(os.path.join(KEYS_DIR, name + ".txt"))
        n = sum(p.numel() for p in m.parameters())
        keys_ok = got == want
        exp = EXPECTED_PARAMS.get(name)
        cnt_ok = exp is None or n == exp
        ok &= keys_ok and cnt_ok
        msg = f"  {name:20s} params {n:>11,d}"
        msg += f" (expected {exp:,d}: {'ok' if cnt_ok else 'MISMATCH'})" if exp else " (no reference count)"
        msg += f"; keys {len(got)} {'ok' if keys_ok else 'MISMATCH'}"
        print(msg)
        if not keys_ok:
            gk, wk = [r for r in got], [r for r in want]
            for i, (a, b) in enumerate(zip(gk, wk)):
                if a != b:
                    print(f"    first difference at {i}: got {a} want {b}")
                    break
            else:
                print(f"    lengths differ: got {len(gk)} want {len(wk)}")
    print("self-check:", "PASS" if ok else "FAIL")
    return ok


# ---------------------------------------------------------------------------
# Fixture cases
# ---------------------------------------------------------------------------
def cases():
    SMALL_RES = dict(stem_width=8, num_classes=10)
    W_BASIC, W_BOT = (8, 16, 24, 32), (8, 16, 24, 32)
    return [
        ("in_affine", lambda: nn.InstanceNorm2d(6, affine=True), [2, 6, 5, 7]),
        ("in_running", lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
         [3, 6, 4, 4]),
        ("ibn_half", lambda: IBN(12, 0.5), [2, 12, 6, 6]),
        ("ibn_r07", lambda: IBN(10, 0.7), [2, 10, 5, 5]),
        ("dense_ibn", lambda: DenseIBN(16, 0.4), [2, 16, 5, 5]),
        ("basic_a", lambda: BasicBlock_IBN(8, 16, "a", 2, downsample(8, 16, 2)), [2, 8, 9, 9]),
        ("basic_b", lambda: BasicBlock_IBN(16, 16, "b", 1, None), [2, 16, 6, 6]),
        ("bottleneck_a", lambda: Bottleneck_IBN(16, 8, "a", 2, downsample(16, 32, 2)),
         [2, 16, 8, 8]),
        ("bottleneck_b", lambda: Bottleneck_IBN(32, 8, "b", 1, None), [2, 32, 6, 6]),
        ("resnext_a", lambda: Bottleneck_IBN(16, 8, "a", 2, downsample(16, 32, 2),
                                             groups=4, base_width=16), [2, 16, 8, 8]),
        ("se_a", lambda: Bottleneck_IBN(32, 8, "a", 1, None, se_reduction=4), [2, 32, 6, 6]),
        ("dense_layer", lambda: DenseLayer(16, 8, 4, True), [2, 16, 6, 6]),
        ("transition", lambda: Transition(16, 8), [2, 16, 6, 6]),
        ("net_resnet_basic_a", lambda: ResNet(BasicBlock_IBN, [2, 1, 1, 1], A_CFG, W_BASIC,
                                              **SMALL_RES), [4, 3, 64, 64]),
        ("net_resnet_basic_b", lambda: ResNet(BasicBlock_IBN, [2, 1, 1, 1], B_CFG, W_BASIC,
                                              **SMALL_RES), [4, 3, 64, 64]),
        ("net_resnet_bottleneck_a", lambda: ResNet(Bottleneck_IBN, [2, 1, 1, 1], A_CFG, W_BOT,
                                                   **SMALL_RES), [4, 3, 64, 64]),
        ("net_resnet_bottleneck_b", lambda: ResNet(Bottleneck_IBN, [2, 2, 1, 1], B_CFG, W_BOT,
                                                   **SMALL_RES), [4, 3, 64, 64]),
        ("net_resnext_a", lambda: ResNet(Bottleneck_IBN, [1, 1, 1, 1], A_CFG, W_BOT,
                                         groups=4, base_width=16, **SMALL_RES), [4, 3, 64, 64]),
        ("net_se_resnet_a", lambda: ResNet(Bottleneck_IBN, [1, 1, 1, 1], A_CFG, W_BOT,
                                           se_reduction=4, **SMALL_RES), [4, 3, 64, 64]),
        ("net_densenet_a", lambda: DenseNet(8, [4, 2, 2, 2], 16, 4, 10), [4, 3, 64, 64]),
        ("net_reid_a", lambda: ResNet(BasicBlock_IBN, [1, 1, 1, 1], A_CFG, W_BASIC,
                                      stem_width=8, num_classes=0, last_stride=1),
         [4, 3, 64, 64]),
        # fast-reid's backbone: stem max-pool without padding, in ceil mode (at 66x62 its
        # output is 16x15 where the padded pool gives 17x16); also saved as fast-reid
        # checkpoints are (`.fastreid.pth`, see `fastreid_checkpoint`).
        ("net_fastreid_a", lambda: ResNet(BasicBlock_IBN, [1, 1, 1, 1], A_CFG, W_BASIC,
                                          stem_width=8, num_classes=0, last_stride=1,
                                          stem_pool="ceil"),
         [2, 3, 66, 62]),
    ]


def fastreid_checkpoint(backbone, num_ids=5):
    """A checkpoint laid out as fast-reid's trainer saves one: the meta-architecture's
    state_dict (pixel mean/std buffers, `backbone.*`, a BNNeck embedding head `heads.*`)
    under "model", beside the optimizer's and scheduler's state and the iteration."""
    feat = backbone.layer4[-1].bn2.num_features
    heads = nn.Module()
    heads.bottleneck = nn.Sequential(nn.BatchNorm2d(feat))
    heads.weight = nn.Parameter(torch.randn(num_ids, feat) * 0.01)
    meta = nn.Module()
    meta.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(1, -1, 1, 1))
    meta.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(1, -1, 1, 1))
    meta.backbone = backbone
    meta.heads = heads
    params = [p for p in meta.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # momentum buffers, as after training
    for p in params:
        p.grad = None
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    return {"model": meta.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "iteration": 1234}


@torch.no_grad()
def fixture_init(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            if m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if m.track_running_stats:
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)


def save_npy(path, t):
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    np.save(path, a)


def main(only=()):
    """Writes every case, or only the cases named in `only` (the other files, and their
    lines of the manifest, stay as they are)."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    ok = self_check()
    os.makedirs(OUT, exist_ok=True)
    manifest = ["# name\tinput_shape\toutput_shape\tmax_abs_eval_output"]
    known = [name for name, _, _ in cases()]
    unknown = [name for name in only if name not in known]
    if unknown:
        print(f"no fixture case {', '.join(unknown)}; the cases: {', '.join(known)}")
        return 2
    kept = {}
    if only and os.path.exists(os.path.join(OUT, "MANIFEST.txt")):
        with open(os.path.join(OUT, "MANIFEST.txt")) as f:
            kept = {line.split("\t")[0]: line.rstrip("\n") for line in f if not line.startswith("#")}
    for idx, (name, make, shape) in enumerate(cases()):
        if only and name not in only:
            if name in kept:
                manifest.append(kept[name])
            continue
        torch.manual_seed(1234 + idx)
        model = make()
        fixture_init(model)
        x = torch.randn(shape)
        p = lambda suffix: os.path.join(OUT, name + suffix)
        sd = model.state_dict()
        torch.save(sd, p(".pth"))
        if name in ("net_resnet_basic_a", "net_densenet_a"):
            wrapped = {"state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}
            torch.save(wrapped, p(".wrapped.pth"))
            torch.save(sd, p(".legacy.pth"), _use_new_zipfile_serialization=False)
            torch.save(wrapped, p(".wrapped_legacy.pth"), _use_new_zipfile_serialization=False)
        if name == "net_fastreid_a":
            torch.save(fastreid_checkpoint(model), p(".fastreid.pth"))
        save_npy(p(".input.npy"), x)
        model.eval()
        with torch.no_grad():
            y_eval = model(x.clone())
        save_npy(p(".eval.npy"), y_eval)
        model.train()
        with torch.no_grad():
            y_train = model(x.clone())
        save_npy(p(".train.npy"), y_train)
        torch.save(model.state_dict(), p(".after_train.pth"))
        manifest.append(f"{name}\t{list(shape)}\t{list(y_eval.shape)}\t"
                        f"{y_eval.abs().max().item():.6g}")
    with open(os.path.join(OUT, "MANIFEST.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    print(f"wrote {len(manifest) - 1} cases to {OUT}")
    return 0 if ok else 1


def full_case(name, out_dir, batch=2):
    """Writes a full-size named model's state_dict, a normalised-image-like input and its
    eval output (`<name>.pth`, `<name>.input.npy`, `<name>.eval.npy`) into out_dir: the
    on-demand parity check of examples/parity_full.rs."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(4321)
    model = named_model(name)
    fixture_init(model)
    model.eval()
    x = torch.randn(batch, 3, 224, 224)
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, name + ".pth"))
    save_npy(os.path.join(out_dir, name + ".input.npy"), x)
    with torch.no_grad():
        save_npy(os.path.join(out_dir, name + ".eval.npy"), model(x))
    print(f"wrote {name} to {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--full":
        # python3 scripts/make_fixtures.py --full OUT_DIR NAME [NAME ...]
        for model_name in sys.argv[3:]:
            full_case(model_name, sys.argv[2])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--only":
        # python3 scripts/make_fixtures.py --only NAME [NAME ...]
        sys.exit(main(sys.argv[2:]))
    sys.exit(main())

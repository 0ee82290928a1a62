#!/usr/bin/python3
"""The Vision-RWKV Mask R-CNN detector in plain PyTorch, to time the native engine against.

An importable definition of the official COCO detector (DETECTION.md): the
VRWKV_Adapter backbone of tools/seg_pytorch.py with the detection fusion (the
last interaction's tokens join all four scales), mmdet 2.x's FPN, RPNHead
(anchors, top-k per level, decoding, NMS per level), RoIAlign with level
mapping, Shared2FCBBoxHead, multi-class NMS, FCNMaskHead and the CPU mask
pasting, at the official test settings. Parameter names are the official
checkpoint keys (backbone.*, neck.*, rpn_head.*, roi_head.*), so a checkpoint
loads with strict=True. The operators mmcv compiles are written here in
PyTorch:
  * RoIAlign (aligned, adaptive sampling, avg): the RoIs grouped by sampling
    grid, every sample's four taps gathered at once;
  * NMS: the IoU matrix of a group, then the greedy pass over it (strict >,
    IoU without +1), groups apart by mmcv's coordinate offset;
  * mask pasting: grid_sample on each box's window, as mmdet does on a CPU.
It runs in float32 for timing and in float64 for checking.

  tools/det_pytorch.py --check     # float64 against ../shared/golden/det and det_e2e
  tools/det_pytorch.py --time --model mask_rcnn_vrwkv_t --res 800x1344 --threads 2

`--check` runs every golden case: the dense tensors must agree to
max|diff| / max(1, max|golden|) <= 1e-6, the proposals, detections and labels
must be the same lists, the binary masks equal away from mask.near_thr_idx.
tools/compare_pytorch.py --task det runs this check, then times one
detection against `vrwkv bench`.

Presets mask_rcnn_vrwkv_t/s/b/l are the official configurations (80
classes) with random weights; timing runs with score_thr 0, as `vrwkv bench`
does, so that 100 detections reach the mask head.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compare_pytorch  # noqa: F401  (BLAS settings before torch loads)

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seg_pytorch  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/golden")
PRESETS = ("mask_rcnn_vrwkv_t", "mask_rcnn_vrwkv_s", "mask_rcnn_vrwkv_b", "mask_rcnn_vrwkv_l")
TEST = dict(nms_pre=1000, rpn_max=1000, rpn_iou=0.7, score_thr=0.05, iou=0.5, max_per_img=100, mask_thr=0.5)
STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)


def preset(name):
    cfg = seg_pytorch.preset(name.replace("mask_rcnn", "upernet"))
    cfg.update(final_fusion=True, fpn=256, rpn=256, fc=1024, mask=256, num_classes=80)
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Neck and heads

class FPN(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        conv = lambda ci, k: nn.ModuleDict({"conv": nn.Conv2d(ci, cout, k, 1, k // 2)})
        self.lateral_convs = nn.ModuleList(conv(cin, 1) for _ in range(4))
        self.fpn_convs = nn.ModuleList(conv(cout, 3) for _ in range(4))

    def forward(self, xs):
        lat = [m["conv"](x) for m, x in zip(self.lateral_convs, xs)]
        for i in range(3, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [m["conv"](x) for m, x in zip(self.fpn_convs, lat)]
        return outs + [F.max_pool2d(outs[-1], 1, stride=2)]


class RPNHead(nn.Module):
    def __init__(self, cin, feat):
        super().__init__()
        self.rpn_conv = nn.Conv2d(cin, feat, 3, 1, 1)
        self.rpn_cls = nn.Conv2d(feat, len(RATIOS), 1)
        self.rpn_reg = nn.Conv2d(feat, 4 * len(RATIOS), 1)

    def forward(self, xs):
        out = []
        for x in xs:
            t = F.relu(self.rpn_conv(x))
            out.append((self.rpn_cls(t), self.rpn_reg(t)))
        return out


class BBoxHead(nn.Module):
    def __init__(self, cin, fc, K):
        super().__init__()
        self.shared_fcs = nn.ModuleList([nn.Linear(cin * 49, fc), nn.Linear(fc, fc)])
        self.fc_cls = nn.Linear(fc, K + 1)
        self.fc_reg = nn.Linear(fc, 4 * K)

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class MaskHead(nn.Module):
    def __init__(self, cin, ch, K):
        super().__init__()
        self.convs = nn.ModuleList(nn.ModuleDict({"conv": nn.Conv2d(cin if i == 0 else ch, ch, 3, 1, 1)})
                                   for i in range(4))
        self.upsample = nn.ConvTranspose2d(ch, ch, 2, 2)
        self.conv_logits = nn.Conv2d(ch, K, 1)

    def forward(self, x):
        for m in self.convs:
            x = F.relu(m["conv"](x))
        return self.conv_logits(F.relu(self.upsample(x)))


class RoIHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.bbox_head = BBoxHead(cfg["fpn"], cfg["fc"], cfg["num_classes"])
        self.mask_head = MaskHead(cfg["fpn"], cfg["mask"], cfg["num_classes"])


# ---------------------------------------------------------------------------------------------------------
# Operators

def anchors(H, W, stride):
    r = torch.tensor(RATIOS, dtype=torch.float64)
    hr = r.sqrt()
    w, h = stride * (1 / hr) * 8, stride * hr * 8
    base = torch.stack([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h], 1)
    sy, sx = torch.meshgrid(torch.arange(H, dtype=torch.float64) * stride,
                            torch.arange(W, dtype=torch.float64) * stride, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], -1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def delta2bbox(rois, deltas, stds, max_shape):
    """rois [n,4], deltas [n,4k] -> [n,4k], clipped to max_shape (h, w)."""
    n, k = deltas.shape[0], deltas.shape[1] // 4
    d = deltas.reshape(n, k, 4) * deltas.new_tensor(stds)
    p = rois[:, None, :]
    pxy, pwh = (p[..., :2] + p[..., 2:]) * 0.5, p[..., 2:] - p[..., :2]
    r = abs(math.log(16 / 1000))
    gxy, gwh = pxy + pwh * d[..., :2], pwh * d[..., 2:].clamp(-r, r).exp()
    b = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)
    b[..., 0::2] = b[..., 0::2].clamp(0, max_shape[1])
    b[..., 1::2] = b[..., 1::2].clamp(0, max_shape[0])
    return b.reshape(n, 4 * k)


def nms(boxes, scores, thr):
    """mmcv nms: indices kept, by descending score (ties in index order)."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.maximum(b[:, None, :2], b[None, :, :2]), torch.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    over = (inter / (area[:, None] + area[None, :] - inter) > thr).numpy()
    n = b.shape[0]
    alive = [True] * n
    keep = []
    for i in range(n):
        if not alive[i]:
            continue
        keep.append(i)
        row = over[i]
        for j in row[i + 1:].nonzero()[0]:
            alive[i + 1 + j] = False
    return order[torch.tensor(keep, dtype=torch.long)]


def batched_nms(boxes, scores, ids, thr):
    """mmcv batched_nms: per group, by mmcv's offset of the coordinates; kept indices by descending score."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    shifted = boxes + (ids.to(boxes) * (boxes.max() + 1))[:, None]
    if boxes.shape[0] < 10000:
        return nms(shifted, scores, thr)
    keep = []
    for g in torch.unique(ids):
        members = (ids == g).nonzero().view(-1)
        keep.append(members[nms(shifted[members], scores[members], thr)])
    keep = torch.cat(keep).sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def roi_align(feat, rois, scale, S):
    """mmcv RoIAlign (aligned, avg, adaptive sampling) of rois [n,4] on feat [C,H,W] -> [n,C,S,S]."""
    C, H, W = feat.shape
    n = rois.shape[0]
    out = feat.new_zeros(n, C, S, S)
    if n == 0:
        return out
    r = rois * scale - 0.5
    rw, rh = r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
    gw = torch.ceil((rw / S).float()).long().clamp(min=0)
    gh = torch.ceil((rh / S).float()).long().clamp(min=0)
    flat = feat.reshape(C, H * W)
    for key in torch.unique(torch.stack([gh, gw], 1), dim=0).tolist():
        sel = ((gh == key[0]) & (gw == key[1])).nonzero().view(-1)
        if key[0] == 0 or key[1] == 0:
            continue
        for chunk in sel.split(64):
            m = chunk.shape[0]
            ry = (torch.arange(S, dtype=feat.dtype)[:, None] +
                  (torch.arange(key[0], dtype=feat.dtype)[None, :] + 0.5) / key[0]).reshape(-1)
            rx = (torch.arange(S, dtype=feat.dtype)[:, None] +
                  (torch.arange(key[1], dtype=feat.dtype)[None, :] + 0.5) / key[1]).reshape(-1)
            y = r[chunk, 1:2] + ry[None] * (rh[chunk] / S)[:, None]  # [m, S·gh]
            x = r[chunk, 0:1] + rx[None] * (rw[chunk] / S)[:, None]  # [m, S·gw]
            y, x = y[:, :, None].expand(m, y.shape[1], x.shape[1]), x[:, None, :].expand(m, y.shape[1], x.shape[1])
            valid = (y >= -1) & (y <= H) & (x >= -1) & (x <= W)
            y, x = y.clamp(min=0), x.clamp(min=0)
            y0, x0 = y.floor().long(), x.floor().long()
            ytop, xtop = y0 >= H - 1, x0 >= W - 1
            y0, x0 = torch.where(ytop, H - 1, y0), torch.where(xtop, W - 1, x0)
            y = torch.where(ytop, y0.to(y), y)
            x = torch.where(xtop, x0.to(x), x)
            y1, x1 = torch.where(ytop, y0, y0 + 1), torch.where(xtop, x0, x0 + 1)
            ly, lx = y - y0, x - x0
            hy, hx = 1 - ly, 1 - lx
            v = (flat[:, (y0 * W + x0).reshape(-1)] * (hy * hx * valid).reshape(-1) +
                 flat[:, (y0 * W + x1).reshape(-1)] * (hy * lx * valid).reshape(-1) +
                 flat[:, (y1 * W + x0).reshape(-1)] * (ly * hx * valid).reshape(-1) +
                 flat[:, (y1 * W + x1).reshape(-1)] * (ly * lx * valid).reshape(-1))
            v = v.reshape(C, m, S, key[0], S, key[1]).mean(dim=(3, 5))
            out[chunk] = v.permute(1, 0, 2, 3)
    return out


def roi_levels(rois):
    scale = ((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])).sqrt()
    return torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3).long()


def extract(feats, rois, S):
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], S, S)
    lv = roi_levels(rois)
    for l in range(4):
        idx = (lv == l).nonzero().view(-1)
        if idx.numel():
            out[idx] = roi_align(feats[l][0], rois[idx], 1.0 / STRIDES[l], S)
    return out


def paste_mask(mask, box, h, w):
    """mmdet _do_paste_mask on a CPU (skip_empty): mask [M,M] probabilities, box (x0,y0,x1,y1) -> [h,w]."""
    x0, y0, x1, y1 = [float(v) for v in box]
    xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    xb, yb = min(math.ceil(x1) + 1, w), min(math.ceil(y1) + 1, h)
    out = torch.zeros(h, w)
    if xa >= xb or ya >= yb:
        return out
    bx = torch.tensor([x0, y0, x1, y1], dtype=torch.float32)
    iy = (torch.arange(ya, yb, dtype=torch.float32) + 0.5 - bx[1]) / (bx[3] - bx[1]) * 2 - 1
    ix = (torch.arange(xa, xb, dtype=torch.float32) + 0.5 - bx[0]) / (bx[2] - bx[0]) * 2 - 1
    iy = torch.where(torch.isinf(iy), torch.zeros_like(iy), iy)
    ix = torch.where(torch.isinf(ix), torch.zeros_like(ix), ix)
    grid = torch.stack([ix[None, :].expand(len(iy), len(ix)), iy[:, None].expand(len(iy), len(ix))], -1)
    out[ya:yb, xa:xb] = F.grid_sample(mask[None, None].float(), grid[None], align_corners=False)[0, 0]
    return out


# ---------------------------------------------------------------------------------------------------------
# The detector

class Detector(nn.Module):
    def __init__(self, cfg, backbone=True):
        super().__init__()
        self.cfg = dict(cfg)
        if backbone:
            self.backbone = seg_pytorch.VRWKVAdapter(cfg)
        self.neck = FPN(cfg["in_channels"] if "in_channels" in cfg else cfg["embed_dims"], cfg["fpn"])
        self.rpn_head = RPNHead(cfg["fpn"], cfg["rpn"])
        self.roi_head = RoIHead(cfg)
        self.test = dict(TEST)
        self.eval()

    def forward(self, img, meta, trace=None, times=None):
        t0 = time.perf_counter()
        feats = self.backbone(img, trace)
        if trace is not None:
            trace.update({f"features.{i}": f for i, f in enumerate(feats)})
        if times is not None:
            times["backbone"] = time.perf_counter() - t0
        return self.heads(feats, meta, trace, times)

    def heads(self, feats, meta, trace=None, times=None):
        rec = (lambda k, t: trace.__setitem__(k, t)) if trace is not None else (lambda k, t: None)
        tick = [time.perf_counter()]

        def lap(name):
            now = time.perf_counter()
            if times is not None:
                times[name] = now - tick[0]
            tick[0] = now

        T, K = self.test, self.cfg["num_classes"]
        img_h, img_w = meta["img_shape"]
        ori_h, ori_w = meta["ori_shape"]
        sf = torch.tensor(meta["scale_factor"], dtype=torch.float32).to(feats[0].dtype)
        P = self.neck(feats)
        for i, p in enumerate(P):
            rec(f"fpn.{i}", p)
        lap("fpn")
        scores, boxes, ids = [], [], []
        for l, (cls, reg) in enumerate(self.rpn_head(P)):
            rec(f"rpn.cls.{l}", cls)
            rec(f"rpn.reg.{l}", reg)
            s = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()
            d = reg[0].permute(1, 2, 0).reshape(-1, 4)
            a = anchors(cls.shape[2], cls.shape[3], STRIDES[l]).to(s.dtype)
            if 0 < T["nms_pre"] < s.shape[0]:
                s, idx = torch.sort(s, descending=True, stable=True)
                s, idx = s[:T["nms_pre"]], idx[:T["nms_pre"]]
                d, a = d[idx], a[idx]
            scores.append(s)
            boxes.append(delta2bbox(a, d, (1.0, 1.0, 1.0, 1.0), (img_h, img_w)))
            ids.append(torch.full_like(s, l, dtype=torch.long))
        s, b, ids = torch.cat(scores), torch.cat(boxes), torch.cat(ids)
        ok = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
        s, b, ids = s[ok], b[ok], ids[ok]
        keep = batched_nms(b, s, ids, T["rpn_iou"])[:T["rpn_max"]]
        proposals = torch.cat([b[keep], s[keep, None]], 1)
        rec("proposals", proposals)
        lap("rpn")
        rois = proposals[:, :4]
        roi_feats = extract(P, rois, 7)
        rec("roi_feats", roi_feats)
        cls_score, bbox_pred = self.roi_head.bbox_head(roi_feats)
        rec("bbox.cls_score", cls_score)
        rec("bbox.bbox_pred", bbox_pred)
        probs = F.softmax(cls_score, -1)[:, :K]
        bb = delta2bbox(rois, bbox_pred, (0.1, 0.1, 0.2, 0.2), (img_h, img_w))
        bb = (bb.reshape(-1, K, 4) / sf).reshape(-1, 4)
        flat = probs.reshape(-1)
        labels = torch.arange(K).repeat(probs.shape[0])
        sel = (flat > T["score_thr"]).nonzero().view(-1)
        keep = batched_nms(bb[sel], flat[sel], labels[sel], T["iou"])[:T["max_per_img"]]
        det_boxes, det_scores, det_labels = bb[sel][keep], flat[sel][keep], labels[sel][keep]
        lap("roi")
        mrois = det_boxes * sf
        rec("mask.rois", mrois)
        masks = torch.zeros(len(keep), ori_h, ori_w, dtype=torch.uint8)
        if len(keep):
            logits = self.roi_head.mask_head(extract(P, mrois, 14))
            logits = logits[torch.arange(len(keep)), det_labels]
            rec("mask.logits", logits)
            prob = logits.sigmoid()
            back = (mrois.float() / sf.float())
            for i in range(len(keep)):
                masks[i] = (paste_mask(prob[i], back[i], ori_h, ori_w) >= T["mask_thr"]).to(torch.uint8)
        lap("mask")
        return det_boxes, det_scores, det_labels, masks


# ---------------------------------------------------------------------------------------------------------
# Golden check

TOLERANCE = 1e-6
read_safetensors, load_checkpoint, rel_err = seg_pytorch.read_safetensors, seg_pytorch.load_checkpoint, seg_pytorch.rel_err


def config_from_case(meta, sd):
    roi = meta["config"]["roi_head"]
    cfg = dict(fpn=meta["config"]["neck"]["out_channels"], rpn=meta["config"]["rpn_head"]["feat_channels"],
               fc=roi["bbox_head"]["fc_out_channels"], mask=roi["mask_head"]["conv_out_channels"],
               num_classes=roi["bbox_head"]["num_classes"], in_channels=meta["config"]["neck"]["in_channels"][0])
    if "backbone" in meta["config"]:
        bb = meta["config"]["backbone"]
        cfg.update(embed_dims=bb["embed_dims"], depth=bb["depth"], img_size=bb.get("img_size", 224),
                   patch_size=bb.get("patch_size", 16), init_values=bb.get("init_values"),
                   post_norm=bb.get("post_norm", False), key_norm=bb.get("key_norm", False),
                   conv_inplane=bb.get("conv_inplane", 64), deform_num_heads=bb.get("deform_num_heads", 6),
                   n_points=bb.get("n_points", 4), deform_ratio=bb.get("deform_ratio", 1.0),
                   cffn_ratio=bb.get("cffn_ratio", 0.25), interaction_indexes=bb["interaction_indexes"],
                   wkv_chunks=meta.get("wkv_token_split", 32), final_fusion=True)
    return cfg


def check_case(base):
    """One golden case in float64: {tensor: error}, and whether the lists (proposals, detections, labels,
    masks away from the threshold) are the same."""
    meta = json.load(open(base + ".json"))
    sd = load_checkpoint(base + ".pth")
    gold = read_safetensors(base + ".safetensors")
    whole = "input" in gold
    cfg = config_from_case(meta, sd)
    model = Detector(cfg, backbone=whole)
    model.load_state_dict(sd, strict=True)
    model.double().eval()
    m = {k: gold[k].tolist() for k in ("img_shape", "ori_shape", "pad_shape")}
    m["scale_factor"] = gold["scale_factor"].tolist()
    trace = {}
    with torch.inference_mode():
        if whole:
            boxes, scores, labels, masks = model(gold["input"].double(), m, trace)
        else:
            boxes, scores, labels, masks = model.heads([gold[f"features.{i}"].double() for i in range(4)], m, trace)
    trace.update({"det.bboxes": boxes, "det.scores": scores})
    errs = {k: rel_err(v, gold[k]) for k, v in trace.items() if k in gold and v.shape == gold[k].shape}
    same = (labels.tolist() == gold["det.labels"].tolist() and trace["proposals"].shape == gold["proposals"].shape)
    near = {tuple(r) for r in gold["mask.near_thr_idx"].tolist()}
    differ = [tuple(i) for i in (masks != gold["mask.binary"]).nonzero().tolist()]
    same &= all(d in near for d in differ)
    missing = [k for k in ("proposals", "roi_feats", "bbox.cls_score", "det.bboxes", "mask.logits") if k not in errs]
    return errs, same and not missing


def self_check(verbose=True, out=sys.stdout):
    ok, cases = True, []
    for sub in ("det", "det_e2e"):
        d = os.path.join(GOLDEN, sub)
        if os.path.isdir(d):
            cases += [os.path.join(d, f[:-5]) for f in sorted(os.listdir(d)) if f.endswith(".json")]
    if not cases:
        print("det_pytorch: no golden cases: check skipped", file=out)
        return True
    for base in cases:
        errs, same = check_case(base)
        worst = max(errs.values())
        good = same and worst <= TOLERANCE
        ok &= good
        if verbose:
            print(f"{os.path.basename(base)}: {'ok' if good else 'FAILED'} (worst {worst:.1e} over {len(errs)} tensors, "
                  f"same detections {same})", file=out)
    return ok


# ---------------------------------------------------------------------------------------------------------
# Extra cases: a golden case's weights on other sizes and paddings, computed in float64 here

def write_safetensors(path, tensors):
    names = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}
    header, blobs, at = {}, [], 0
    for k, t in tensors.items():
        t = t.contiguous()
        b = t.numpy().tobytes()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def make_case(base, out, pad, img, ori, seed):
    """The case `base`'s weights on new input (random features or a random image) of padded size `pad`,
    resized size `img` and original size `ori`, in float64: the golden file's names, stored as float32."""
    meta = json.load(open(base + ".json"))
    sd = load_checkpoint(base + ".pth")
    whole = "backbone" in meta["config"]
    model = Detector(config_from_case(meta, sd), backbone=whole)
    model.load_state_dict(sd, strict=True)
    model.double().eval()
    g = torch.Generator().manual_seed(seed)
    sf = [float(torch.tensor(img[1] / ori[1], dtype=torch.float32)), float(torch.tensor(img[0] / ori[0], dtype=torch.float32))]
    m = dict(img_shape=list(img), ori_shape=list(ori), pad_shape=list(pad), scale_factor=sf * 2)
    t = {}
    with torch.inference_mode():
        if whole:
            x = torch.zeros(1, 3, *pad, dtype=torch.float64)
            x[:, :, :img[0], :img[1]] = torch.randn(1, 3, *img, generator=g, dtype=torch.float64)
            x = x.float().double()
            t["input"] = x
            boxes, scores, labels, masks = model(x, m, t)
        else:
            C = meta["config"]["neck"]["in_channels"][0]
            feats = [torch.randn(1, C, pad[0] // s, pad[1] // s, generator=g, dtype=torch.float64).float().double()
                     for s in STRIDES[:4]]
            t.update({f"features.{i}": f for i, f in enumerate(feats)})
            boxes, scores, labels, masks = model.heads(feats, m, t)
    t.update({"det.bboxes": boxes, "det.scores": scores, "det.labels": labels, "mask.binary": masks,
              "img_shape": torch.tensor(img), "ori_shape": torch.tensor(ori), "pad_shape": torch.tensor(pad),
              "scale_factor": torch.tensor(sf * 2, dtype=torch.float32),
              "mask.near_thr_idx": torch.zeros(0, 3, dtype=torch.int32),
              "num_proposals": torch.tensor([t["proposals"].shape[0]]), "num_dets": torch.tensor([len(labels)])})
    # Left out to keep the files small: the RoI features (the box head's outputs follow from them) and
    # the inputs' echoes.
    drop = ("deform.", "roi_feats", "backbone.patch_embed")
    t = {k: (v.float() if v.dtype == torch.float64 else v) for k, v in t.items() if not k.startswith(drop)}
    write_safetensors(out, t)
    return t["proposals"].shape[0], len(labels)


# ---------------------------------------------------------------------------------------------------------
# Timing

def time_detect(model, h, w, warmup, reps):
    x = torch.randn(1, 3, h, w, dtype=next(model.parameters()).dtype)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0, 1.0, 1.0))
    runs = []
    counter = seg_pytorch.FlopCounter(model)
    with torch.inference_mode():
        for r in range(warmup + reps):
            if r == 0:
                counter.__enter__()
            times = {}
            t0 = time.perf_counter()
            model(x, meta, times=times)
            times["total"] = time.perf_counter() - t0
            if r == 0:
                counter.__exit__()
            if r >= warmup:
                runs.append(times)
    med = {k: 1000 * statistics.median(t[k] for t in runs) for k in runs[0]}
    return dict(ms=med.pop("total"), stages=med, flops=counter.total)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="float64 check against the detection goldens")
    p.add_argument("--time", action="store_true", help="time one detection (float32)")
    p.add_argument("--model", default="mask_rcnn_vrwkv_t", help=", ".join(PRESETS))
    p.add_argument("--res", default="800x1344", help="HxW, multiples of 32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blas-threads", type=int, help="OpenBLAS threads (default: --threads)")
    p.add_argument("--openblas-coretype", help="OpenBLAS kernels (see compare_pytorch.py)")
    p.add_argument("--make-case", nargs=6, metavar=("GOLDEN_CASE", "OUT", "PAD", "IMG", "ORI", "SEED"),
                   help="write GOLDEN_CASE's weights on a new input (sizes HxW) computed in float64 to OUT")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    if a.make_case:
        base, out, pad, img, ori, seed = a.make_case
        hw = lambda v: tuple(int(x) for x in v.split("x"))
        n = make_case(base, out, hw(pad), hw(img), hw(ori), int(seed))
        print(f"{out}: {n[0]} proposals, {n[1]} detections")
        return
    if not (a.check or a.time):
        p.error("give --check and/or --time")
    torch.set_num_threads(a.threads)
    status = 0
    if a.check:
        ok = self_check()
        print(f"self-check {'passed' if ok else 'FAILED'} (tolerance {TOLERANCE:g}, float64)")
        status |= not ok
    if a.time:
        torch.manual_seed(0)
        model = Detector(preset(a.model)).float().eval()
        model.test["score_thr"] = 0.0
        h, w = (int(v) for v in a.res.split("x"))
        t = time_detect(model, h, w, a.warmup, a.reps)
        st = ", ".join(f"{k} {v:.0f}" for k, v in t["stages"].items())
        print(f"{a.model} {h}x{w}: {t['ms']:.0f} ms ({st}), {t['flops'] / 1e9:.1f} GFLOP, "
              f"{t['flops'] / t['ms'] / 1e6:.1f} GFLOP/s", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()

"""Student and EMA teacher (backbone + DINO/iBOT heads) and the one training-step function.

One iteration of DINOv2, for a batch of B images with G = 2 global and L local crops (crop-major):

1. teacher (no gradients) on the G*B unmasked global crops: class tokens -> DINO head -> centred,
   sharpened probabilities; the patch tokens at the masked positions -> iBOT head -> probabilities;
2. student on the masked global crops and on the local crops: class tokens -> DINO head logits, the
   masked patch tokens -> iBOT head logits;
3. loss = w_dino * DINO(student global+local logits, teacher global probs)
        + w_koleo * sum over global crops of KoLeo(student class tokens of that crop)
        + w_ibot * iBOT(student masked patch logits, teacher masked patch probs);
4. backward (the student is DDP-wrapped under torch.distributed, so gradients are averaged).

The optimiser step, gradient clipping and EMA are separate calls, driven by the engine
(``clip_gradients``, ``update_teacher``); the heads' last layer is frozen by a learning rate of 0 in
its parameter group (``pretrain.schedules.apply_schedules``), so its gradients still count in the
clipped norm.

No host-device sync: the masked patch tokens are gathered with ``index_select`` on flat indices the
collate computed on the CPU (``batch.mask_indices``, with the iBOT weights ``batch.mask_weights``;
:func:`pretrain.masking.masked_token_indices`), so every shape in the step is known to the host without
asking the device (boolean indexing or ``nonzero`` on the device would make the host wait for it).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from fdbench.device import autocast
from fdbench.models import build_backbone
from pretrain.config import PretrainConfig
from pretrain.heads import DINOHead
from pretrain.batch import CropBatch
from pretrain.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from pretrain.masking import masked_token_indices


class BackboneWithHeads(nn.Module):
    """Backbone + heads, the student or the EMA teacher, with a single forward for all crops (so DDP
    sees one forward per step)."""

    def __init__(self, backbone: nn.Module, dino_head: nn.Module, ibot_head: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head  # None: iBOT shares the DINO head (DINOv2 default)

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None,
        masks: torch.Tensor | None,
        mask_indices: torch.Tensor | None = None,
    ):
        """Returns a dict with ``global_cls`` [G*B,D], ``global_logits`` [G*B,K], ``local_logits``
        [L*B,K] or None, and ``patch_logits`` [M,K] for the masked tokens at ``mask_indices`` [M]
        (flat positions in ``masks``, :func:`pretrain.masking.masked_token_indices`)."""
        global_cls, global_patch = self.backbone(global_crops, masks=masks)
        local_cls = self.backbone(local_crops)[0] if local_crops is not None else None
        masked = _masked_tokens(global_patch, mask_indices)
        n_global, n_local = len(global_cls), 0 if local_cls is None else len(local_cls)
        if self.ibot_head is None:
            # one head call for everything, as DINOv2 does with a shared head
            parts = [global_cls] + ([local_cls] if local_cls is not None else []) + [masked]
            logits = self.dino_head(torch.cat(parts))
            global_logits, local_logits, patch_logits = logits.split([n_global, n_local, len(masked)])
        else:
            cls = global_cls if local_cls is None else torch.cat([global_cls, local_cls])
            global_logits, local_logits = self.dino_head(cls).split([n_global, n_local])
            patch_logits = self.ibot_head(masked)
        return {
            "global_cls": global_cls,
            "global_logits": global_logits,
            "local_logits": local_logits if n_local else None,
            "patch_logits": patch_logits,
        }


def _masked_tokens(patch_tokens: torch.Tensor, mask_indices: torch.Tensor | None) -> torch.Tensor:
    """The rows ``mask_indices`` [M] of ``patch_tokens`` [N,P,D] flattened to [N*P,D]: for the indices
    of :func:`pretrain.masking.masked_token_indices`, the tokens where the masks are True, in flatten()
    order. ``index_select`` with host-known M: unlike ``tokens[masks]``, no wait for the device."""
    if mask_indices is None:
        return patch_tokens.new_zeros(0, patch_tokens.shape[-1])
    return patch_tokens.flatten(0, 1).index_select(0, mask_indices)


class MetaArch(nn.Module):
    """Student, EMA teacher and losses of one DINOv2 run."""

    def __init__(self, cfg: PretrainConfig, device: torch.device | str = "cpu", backbone: nn.Module | None = None):
        """``backbone``: the student's backbone, instead of the one ``cfg.model`` describes. It must
        follow :class:`fdbench.models.MaskableViT`'s interface (``backbone(x, masks=...)`` returns the
        class token [N,D] and the patch tokens [N,P,D]; ``embed_dim``; ``config`` for the checkpoint);
        the teacher is a copy of it (with its drop path, if it has any)."""
        super().__init__()
        self.cfg = cfg
        self.device = torch.device(device)
        m, h, lc = cfg.model, cfg.head, cfg.loss
        user_backbone = backbone is not None
        if not user_backbone:
            backbone = build_backbone(
                m.arch,
                img_size=cfg.crops.global_size,
                patch_size=m.patch_size,
                reg_tokens=m.reg_tokens,
                drop_path_rate=m.drop_path_rate,
                drop_path_uniform=m.drop_path_uniform,
                layerscale=m.layerscale,
            )
        dim = backbone.embed_dim
        dino_head = DINOHead(
            dim, h.prototypes, hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim, nlayers=h.nlayers
        )
        ibot_head = (
            DINOHead(
                dim, h.ibot_prototypes, hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim, nlayers=h.nlayers
            )
            if h.ibot_separate_head
            else None
        )
        self.student = BackboneWithHeads(backbone, dino_head, ibot_head)

        # the teacher starts as a copy of the student, without drop path, and never gets gradients
        if user_backbone:
            teacher_backbone = copy.deepcopy(backbone)
        else:
            teacher_backbone = build_backbone(
                m.arch,
                img_size=cfg.crops.global_size,
                patch_size=m.patch_size,
                reg_tokens=m.reg_tokens,
                drop_path_rate=0.0,
                layerscale=m.layerscale,
            )
            teacher_backbone.load_state_dict(backbone.state_dict())
        self.teacher = BackboneWithHeads(
            teacher_backbone, copy.deepcopy(dino_head), copy.deepcopy(ibot_head) if ibot_head is not None else None
        )
        self.teacher.requires_grad_(False).eval()

        self.dino_loss = DINOLoss(h.prototypes, student_temp=lc.student_temp, center_momentum=lc.center_momentum)
        patch_dim = h.ibot_prototypes if h.ibot_separate_head else h.prototypes
        self.ibot_loss = iBOTPatchLoss(patch_dim, student_temp=lc.student_temp, center_momentum=lc.center_momentum)
        self.koleo_loss = KoLeoLoss()
        self.to(self.device)
        self.student_ddp: nn.Module = self.student  # replaced by a DDP wrapper in wrap_ddp()
        self.sharded = False  # FSDP2 (shard()): parameters are DTensor shards
        self.eval_backbone: nn.Module | None = None  # rank 0 under FSDP: an unsharded copy for the kNN monitor
        # the last step's teacher class embeddings [G*B,D] and DINO targets [G*B,K] (None before one)
        self.teacher_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pairs = self._ema_pairs()

    # ---- checkpoint -----------------------------------------------------------------------------------

    def state_dict_parts(self) -> dict:
        """The model's entries of a training checkpoint (student, teacher, the losses' centres).

        Sharded (FSDP), the tensors are gathered whole: a collective that every rank calls."""
        if self.sharded:
            from pretrain.sharding import full_state_dict

            teacher = full_state_dict(self.teacher)
            return {
                "model": self.teacher.backbone.config.to_dict(),
                "teacher_backbone": {k[len("backbone.") :]: v for k, v in teacher.items() if k.startswith("backbone.")},
                "student": full_state_dict(self.student),
                "teacher": teacher,
                "losses": {"dino": self.dino_loss.state_dict(), "ibot": self.ibot_loss.state_dict()},
            }
        return {
            "model": self.teacher.backbone.config.to_dict(),  # built at the full global crop size
            "teacher_backbone": self.teacher.backbone.state_dict(),
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "losses": {"dino": self.dino_loss.state_dict(), "ibot": self.ibot_loss.state_dict()},
        }

    def load_state_dict_parts(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.dino_loss.load_state_dict(state["losses"]["dino"])
        self.ibot_loss.load_state_dict(state["losses"]["ibot"])

    # ---- set-up ------------------------------------------------------------------------------------

    def wrap_ddp(self) -> None:
        """Wrap the student for data-parallel training (call once torch.distributed is initialised)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_ddp = nn.parallel.DistributedDataParallel(
                self.student, device_ids=ids, broadcast_buffers=False
            )

    def shard(self) -> None:
        """FSDP2 on the student and teacher (``pretrain.sharding``); load any checkpoint before this."""
        from pretrain.sharding import shard_student_and_teacher

        if dist.get_rank() == 0:  # the kNN monitor runs on rank 0 alone: it needs whole weights
            template = copy.deepcopy(self.teacher.backbone)
            if {n for n, _ in template.named_buffers()} <= set(template.state_dict()):
                template.to("meta")  # no storage between evaluations: every tensor comes from the gather
            self.eval_backbone = template
        shard_student_and_teacher(self)
        self.sharded = True
        self._pairs = self._ema_pairs()  # the sharded parameters replaced the old ones

    def backbone_for_eval(self) -> nn.Module | None:
        """The teacher backbone, whole, where the monitor runs (sharded: gathered into rank 0's copy,
        a collective; other ranks get None)."""
        if not self.sharded:
            return self.teacher.backbone
        from pretrain.sharding import full_state_dict

        state = full_state_dict(self.teacher.backbone)
        if self.eval_backbone is None:
            return None
        if any(t.is_meta for t in self.eval_backbone.state_dict().values()):
            self.eval_backbone.to_empty(device=self.device)
        self.eval_backbone.load_state_dict(state)
        return self.eval_backbone.eval()

    def release_eval_backbone(self) -> None:
        """Free the gathered copy after an evaluation (sharded runs; a no-op otherwise)."""
        if self.sharded and self.eval_backbone is not None:
            if {n for n, _ in self.eval_backbone.named_buffers()} <= set(self.eval_backbone.state_dict()):
                self.eval_backbone.to("meta")

    def _ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        student = dict(self.student.named_parameters())
        teacher = dict(self.teacher.named_parameters())
        if student.keys() != teacher.keys():
            raise RuntimeError("student and teacher parameters do not match")
        names = list(student)
        return [teacher[n] for n in names], [student[n] for n in names]

    def named_student_modules(self) -> dict[str, nn.Module]:
        """What ``pretrain.schedules.param_groups`` needs: the student's parts by name."""
        parts = {"backbone": self.student.backbone, "dino_head": self.student.dino_head}
        if self.student.ibot_head is not None:
            parts["ibot_head"] = self.student.ibot_head
        return parts

    # ---- one step ----------------------------------------------------------------------------------

    def _ibot_on(self, masks: torch.Tensor | None) -> bool:
        # decided from the config only, so every DDP rank takes the same branch (centring all-reduces)
        return masks is not None and self.cfg.loss.ibot_weight > 0 and self.cfg.loss.mask_probability > 0

    def forward_backward(self, batch: CropBatch, teacher_temp: float) -> dict[str, torch.Tensor]:
        """Losses of one batch, and their gradients accumulated into the student.

        ``batch`` is a :class:`~pretrain.batch.CropBatch` (``pretrain.augment.collate_multicrop``'s, or
        ``pretrain.gpu_augment.GpuMultiCrop``'s). Returns the detached loss terms
        ``loss`` (the total), ``dino``, ``koleo``, ``ibot`` (unweighted) as 0-d tensors.

        Nothing here waits for the device: the masked tokens are gathered at ``batch.mask_indices``
        and weighted by ``batch.mask_weights``, computed on the CPU by the collate. A batch without
        them (hand-made) gets them from its masks here, which on a GPU costs a sync.
        """
        lc = self.cfg.loss
        global_crops = batch.global_crops.to(self.device, non_blocking=True)
        local_crops = batch.local_crops.to(self.device, non_blocking=True) if batch.local_crops is not None else None
        masks = mask_indices = mask_weights = None
        if self._ibot_on(batch.masks):
            mask_indices, mask_weights = batch.mask_indices, batch.mask_weights
            if mask_indices is None:
                mask_indices, mask_weights = masked_token_indices(batch.masks)
            masks = batch.masks.to(self.device, non_blocking=True)
            mask_indices = mask_indices.to(self.device, non_blocking=True)
            mask_weights = mask_weights.to(self.device, non_blocking=True)
        n_global = 2
        with autocast(self.device):
            teacher_cls_probs, teacher_patch_probs = self.teacher_targets(global_crops, mask_indices, teacher_temp)
            out = self.student_ddp(global_crops, local_crops, masks, mask_indices)
            dino = self.dino_loss(
                out["global_logits"].float(),
                None if out["local_logits"] is None else out["local_logits"].float(),
                teacher_cls_probs,
            )
            koleo = sum(self.koleo_loss(c.float()) for c in out["global_cls"].chunk(n_global))
            ibot = (
                self.ibot_loss(
                    out["patch_logits"].float(), teacher_patch_probs, mask_weights=mask_weights, n_images=masks.shape[0]
                )
                if masks is not None
                else dino.new_zeros(())
            )
            total = lc.dino_weight * dino + lc.koleo_weight * koleo + lc.ibot_weight * ibot
        total.backward()
        return {"loss": total.detach(), "dino": dino.detach(), "koleo": koleo.detach(), "ibot": ibot.detach()}

    @torch.no_grad()
    def teacher_targets(
        self, global_crops: torch.Tensor, mask_indices: torch.Tensor | None, teacher_temp: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher probabilities for the DINO loss [G*B,K] and for the masked patches [M,K] (or None).

        The teacher sees the unmasked global crops; its patch tokens at the student's masked
        positions (``mask_indices``, flat, or None without iBOT) are the iBOT targets. One backbone
        pass serves both losses.
        """
        cls, patch = self.teacher.backbone(global_crops)
        masked = _masked_tokens(patch, mask_indices)
        if self.teacher.ibot_head is None:
            logits = self.teacher.dino_head(torch.cat([cls, masked]))
            cls_logits, patch_logits = logits.split([len(cls), len(masked)])
        else:
            cls_logits, patch_logits = self.teacher.dino_head(cls), self.teacher.ibot_head(masked)
        cls_probs, patch_probs = self._centre(
            cls_logits.float(), patch_logits.float() if mask_indices is not None else None, teacher_temp
        )
        # kept (on the device, no copy) for the collapse monitor, which reads them on logging steps
        self.teacher_outputs = (cls, cls_probs)
        return cls_probs, patch_probs

    def _centre(self, cls_logits, patch_logits, teacher_temp):
        """Centred (momentum mean, then the centre is updated) or Sinkhorn-Knopp teacher softmax."""
        if self.cfg.loss.centering == "sinkhorn_knopp":
            cls_probs = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp)
            patch_probs = None
            if patch_logits is not None:
                # the count is host-known (len of the gathered rows); sinkhorn fills it on the device
                patch_probs = self.ibot_loss.sinkhorn_knopp_teacher(patch_logits, teacher_temp, len(patch_logits))
            return cls_probs, patch_probs
        cls_probs = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
        self.dino_loss.update_center(cls_logits)
        patch_probs = None
        if patch_logits is not None:
            patch_probs = self.ibot_loss.softmax_center_teacher(patch_logits, teacher_temp)
            self.ibot_loss.update_center(patch_logits)
        return cls_probs, patch_probs

    # ---- after backward ----------------------------------------------------------------------------

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip each student part's gradient norm separately (as DINOv2); returns the backbone's norm."""
        norms = [
            nn.utils.clip_grad_norm_([p for p in part.parameters() if p.grad is not None], max_norm)
            for part in self.named_student_modules().values()
        ]
        if self.sharded:  # the norm over all shards, as a DTensor: read it as a plain tensor
            from pretrain.sharding import full

            return full(norms[0])
        return norms[0]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, for every parameter, with fused foreach ops."""
        teacher, student = self._pairs
        if self.sharded:  # on the local shards (student and teacher are sharded alike)
            from pretrain.sharding import local, reshard

            # FSDP2 keeps a root module's gathered parameters after its forward (for the backward the
            # teacher never has): drop them, or the next forward would reuse them, missing this update
            reshard(self.teacher)
            teacher, student = [local(t) for t in teacher], [local(s) for s in student]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - momentum)

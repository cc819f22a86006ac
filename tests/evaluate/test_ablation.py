"""The ablation command: variants change one option each, every variant trains, and a tiny run writes the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from hifusion import constants as C
from hifusion.checkpoint import read_checkpoint
from hifusion.config import AblationAxis, parse_config
from hifusion.constants import CKPT_META_KEY
from hifusion.evaluate.ablation import (
    REGION_FACTOR,
    ablation_config,
    default_axes,
    make_variants,
    run_ablation,
    select_axes,
)
from hifusion.models import create_model, hifusion_loss
from tests.synthetic import tiny_config, write_dataset


def _cfg(tmp: Path, root: Path | None = None, **extra: object):
    data = tiny_config(root or tmp / "raw", tmp / "cache", tmp / "runs", epochs=1)
    data.update(extra)
    return parse_config(data)


def test_default_axes_are_the_papers(tmp_path: Path) -> None:
    axes = {a.option: a.values for a in default_axes(_cfg(tmp_path))}
    assert axes["tokens"] == [1, 2, 3, 4]
    assert axes[REGION_FACTOR] == [1.0, 1.5, 2.0, 3.0]
    assert axes["levels"] == [[1], [1, 4]]  # prefixes of the config's levels
    cpu = _cfg(tmp_path, model={"name": "hifusion", "options": {"levels": [1, 4, 16]}})
    assert {a.option: a.values for a in default_axes(cpu)}["levels"] == [[1], [1, 4], [1, 4, 16]]
    assert {a.option: a.values for a in default_axes(_cfg(tmp_path, model={"name": "hifusion"}))}["levels"] == [
        [1],
        [1, 4],
        [1, 4, 49],
    ]


def test_each_variant_changes_exactly_one_option(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    variants = make_variants(cfg)
    default = variants[0]
    assert default.label == "default" and default.option is None
    labels = [v.label for v in variants]
    assert len(labels) == len(set(labels))
    # tokens=1, region=2x and levels=[1,4] equal the tiny default: shared with it, not run again
    assert {o for o, _ in default.stands_for} == {"tokens", REGION_FACTOR, "levels", "use_alignment", "use_ccf"}
    assert len(variants) == 1 + 3 + 3 + 1 + 1 + 1


def test_spec_from_config_and_only(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ablation=[{"option": "heads", "values": [1, 2, 4]}, {"option": "tokens", "values": [2]}])
    variants = make_variants(cfg, cfg.ablation)
    assert [v.label for v in variants] == ["default", "heads=1", "heads=4", "tokens=2"]
    assert [a.option for a in select_axes(cfg.ablation, ["tokens"])] == ["tokens"]
    from hifusion.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown ablation option"):
        select_axes(cfg.ablation, ["levels"])
    with pytest.raises(ConfigError, match="neither region_factor nor a HiFusion option"):
        make_variants(cfg, [AblationAxis(option="no_such", values=[1])])


def test_region_ablation_uses_a_large_enough_cache(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run_cfg = ablation_config(cfg, make_variants(cfg))
    assert run_cfg.data.prepare.region_factor == 3.0 and run_cfg.data.region_factor == 2.0
    assert run_cfg.data.cache.name == "cache_rf3"
    assert cfg.data.cache.name == "cache"  # the user's config is not modified


def test_every_variant_builds_and_trains_a_step(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    for v in make_variants(cfg):
        model = create_model("hifusion", n_genes=5, **v.model.options)
        spot = torch.randn(2, 3, 16, 16)
        region = torch.randn(2, 3, int(round(16 * v.region_factor / 2) * 2), int(round(16 * v.region_factor / 2) * 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        out = model(spot, region)
        loss, _ = hifusion_loss(out, torch.randn(2, 5), use_alignment=model.use_alignment)
        loss.backward()
        opt.step()
        assert out.pred.shape == (2, 5) and torch.isfinite(loss), v.label


def test_tiny_ablation_end_to_end(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "raw")
    cfg = _cfg(
        tmp_path,
        root,
        ablation=[
            {"option": "tokens", "values": [1, 2]},
            {"option": "region_factor", "values": [1.5, 2, 3]},
            {"option": "use_ccf", "values": [False]},
        ],
    )
    res = run_ablation(cfg, tmp_path / "abl", only=["tokens", "region"], command="hifusion ablate tiny")
    assert res.report.is_file() and (res.out / "report.md").is_file()
    table = pd.read_csv(res.out / "ablation.csv")
    assert set(table["model"]) == {"default", "tokens=2", "region=1.5x", "region=3x", "mean_profile"}
    assert table["pcc_gene_mean"].notna().all()
    text = res.report.read_text()
    assert "tokens=2" in text and "region=3x" in text and "ccf" not in text
    for name in ("ablation_tokens.png", "ablation_region_factor.png"):
        assert (res.out / "figures" / name).stat().st_size > 1000
    run = json.loads((res.out / "run.json").read_text())
    assert run["region_factors"]["region=3x"] == 3.0
    # the 3x variant really saw 48 px region patches from the rf3 cache, the default 32 px crops
    for label, side in (("region=3x", 48), ("region=1.5x", 24), ("default", 32)):
        meta = read_checkpoint(res.out / "runs" / "fixed" / label / C.CKPT_DIR / C.CKPT_LAST)[CKPT_META_KEY]
        assert meta["patch"]["region_px"] == side
    # resuming reuses every finished run
    again = run_ablation(cfg, tmp_path / "abl", only=["tokens", "region"], resume=True)
    assert again.seconds < res.seconds


def test_ablation_over_seeds_reports_the_spread(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "raw")
    cfg = _cfg(tmp_path, root, ablation=[{"option": "use_ccf", "values": [False]}])
    res = run_ablation(cfg, tmp_path / "abl", seeds=[0, 1], command="hifusion ablate tiny --seeds 0,1")
    for seed in (0, 1):
        assert (res.out / f"seed{seed}" / "report.md").is_file()
        assert (res.out / f"seed{seed}" / "runs" / "fixed" / "ccf=off" / C.CKPT_DIR / C.CKPT_LAST).is_file()
    both = pd.read_csv(res.out / C.RUN_METRICS)
    assert set(both["seed"]) == {0, 1}
    table = pd.read_csv(res.out / "ablation.csv").set_index("model")
    assert (table["n_seeds"] == 2).all()
    # the spread is the std over seeds of each seed's mean over test sections, read back from the seed folders
    per_seed = []
    for seed in (0, 1):
        m = pd.read_csv(res.out / f"seed{seed}" / C.RUN_METRICS)
        per_seed.append(m[(m["model"] == "ccf=off") & (m["metric"] == "pcc_gene")]["value"].mean())
    assert per_seed[0] != per_seed[1]  # the seed really changed the training run
    assert table.loc["ccf=off", "pcc_gene_seed_std"] == pytest.approx(float(pd.Series(per_seed).std(ddof=0)))
    assert table.loc["ccf=off", "pcc_gene_mean"] == pytest.approx(sum(per_seed) / 2)
    text = res.report.read_text()
    assert "Seeds: 0, 1" in text and "seed SD PCC-gene" in text
    assert json.loads((res.out / "ablation.json").read_text())["seeds"] == [0, 1]

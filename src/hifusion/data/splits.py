"""Which sections train, validate and test: evaluation protocols as (train, test) splits, and validation carved
from the training data.

Test sections never take part in model selection: validation comes from whole training sections
(`with_validation_sections`) or from a spatially blocked band of each training section's spots (`validation_rows`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hifusion import constants as C
from hifusion.errors import ConfigError

if TYPE_CHECKING:
    from hifusion.config import ValConfig


@dataclass(frozen=True)
class Split:
    name: str
    train: list[str]
    test: list[str]
    val: list[str] = field(default_factory=list)  # whole training sections held out for validation


def _by_patient(patients: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for section in sorted(patients):
        groups[patients[section]].append(section)
    return dict(groups)


def split_3d(patients: dict[str, str], only: list[str] | None = None) -> list[Split]:
    """Sample-specific: for each patient with at least two sections, train on its first, test on the others."""
    out = []
    for patient, sections in _by_patient(patients).items():
        if only and patient not in only:
            continue
        if len(sections) >= 2:
            out.append(Split(f"3d-{patient}", [sections[0]], sections[1:]))
    if not out:
        raise ConfigError("protocol '3d' needs a patient with at least two sections in the cache")
    return out


def split_rotation(patients: dict[str, str]) -> list[Split]:
    """The 3D protocol rotated: each section of a patient trains in turn and the patient's other sections test.

    A result that holds over every (train, test) pair cannot come from tuning to one slide pair, so robustness
    choices are made on all of these pairs together.
    """
    out = []
    for sections in _by_patient(patients).values():
        if len(sections) >= 2:
            out += [Split(f"rot-{s}", [s], [t for t in sections if t != s]) for s in sections]
    if not out:
        raise ConfigError("protocol 'rotation' needs a patient with at least two sections in the cache")
    return out


def split_2d(patients: dict[str, str], folds: list[list[str]] | None = None, k: int = 4) -> list[Split]:
    """k-fold cross-validation over whole patients: no patient is in both train and test.

    `folds` lists, per fold, its test patients (or section ids, which stand for their patients).
    """
    groups = _by_patient(patients)
    if folds is None:
        names = sorted(groups)
        k = min(k, len(names))
        if k < 2:
            raise ConfigError("protocol '2d' needs sections of at least two patients")
        folds = [names[i::k] for i in range(k)]
    out = []
    for i, fold in enumerate(folds):
        test_patients = set()
        for item in fold:
            if item in groups:
                test_patients.add(item)
            elif item in patients:
                test_patients.add(patients[item])
            else:
                raise ConfigError(f"protocol.folds[{i}]: '{item}' is neither a patient nor a section in the cache")
        test = [s for p in sorted(test_patients) for s in groups[p]]
        train = [s for p in sorted(groups) if p not in test_patients for s in groups[p]]
        if not train:
            raise ConfigError(f"protocol.folds[{i}] leaves no training sections")
        out.append(Split(f"2d-fold{i + 1}", train, test))
    return out


def split_loso(patients: dict[str, str]) -> list[Split]:
    """Leave one section out."""
    sections = sorted(patients)
    if len(sections) < 2:
        raise ConfigError("protocol 'loso' needs at least two sections")
    return [Split(f"loso-{s}", [t for t in sections if t != s], [s]) for s in sections]


def make_splits(
    name: str,
    patients: dict[str, str],
    *,
    train: list[str] | None = None,
    test: list[str] | None = None,
    folds: list[list[str]] | None = None,
    k: int = 4,
    only_patients: list[str] | None = None,
) -> list[Split]:
    """Splits of a protocol over the sections of a cache (`patients` maps section -> patient)."""
    if name == "fixed":
        missing = sorted((set(train or []) | set(test or [])) - set(patients))
        if missing:
            raise ConfigError(f"sections {missing} are not in the cache (have {sorted(patients)})")
        return [Split("fixed", list(train or []), list(test or []))]
    if only_patients:
        patients = {s: p for s, p in patients.items() if p in only_patients}
    builders = {
        "3d": lambda: split_3d(patients),
        "rotation": lambda: split_rotation(patients),
        "2d": lambda: split_2d(patients, folds, k),
        "loso": lambda: split_loso(patients),
    }
    if name not in builders:
        raise ConfigError(f"unknown protocol '{name}' (known: fixed, {', '.join(builders)})")
    return builders[name]()


def spatial_block_split(coords: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out one contiguous band of a section (about `fraction` of its spots) for validation.

    Neighbouring spots are correlated; a random spot split would leak. The band runs along the longer axis of
    the section and its position is chosen by `seed`. Returns (train_rows, val_rows).
    """
    n = len(coords)
    if n < 2:
        raise ConfigError("a spatially blocked validation split needs at least two spots")
    extent = coords.max(0) - coords.min(0)
    axis = int(np.argmax(extent))
    order = np.argsort(coords[:, axis], kind="stable")
    n_val = max(1, min(n - 1, int(round(fraction * n))))
    n_bands = max(1, n // n_val)
    band = int(np.random.default_rng(seed).integers(0, n_bands))
    start = min(band * n_val, n - n_val)
    val = np.sort(order[start : start + n_val])
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def with_validation_sections(split: Split, val_cfg: ValConfig, patients: dict[str, str] | None = None) -> Split:
    """Move configured whole training sections into the split's validation set (never test sections).

    With no sections configured, each training patient with several training sections gives its last one (so
    validation, like testing, sees a slide the model was not trained on); `patients` maps section -> patient.
    """
    if val_cfg.mode != "sections":
        return split
    if not val_cfg.sections:
        by_patient: dict[str, list[str]] = {}
        for s in split.train:
            by_patient.setdefault((patients or {}).get(s, s), []).append(s)
        val = [sorted(secs)[-1] for secs in by_patient.values() if len(secs) > 1]
        return Split(split.name, [s for s in split.train if s not in val], split.test, val)
    bad = [s for s in val_cfg.sections if s in split.test]
    if bad:
        raise ConfigError(f"validation sections {bad} are test sections of split {split.name}")
    val = [s for s in val_cfg.sections if s in split.train]
    train = [s for s in split.train if s not in val]
    if not train:
        raise ConfigError(f"split {split.name}: validation sections leave no training section")
    return Split(split.name, train, split.test, val)


def validation_rows(split: Split, adatas: dict[str, Any], rows: dict[str, np.ndarray], val_cfg: ValConfig,
                    seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(training rows, validation rows) per section: whole validation sections, or a spatial block of each
    training section (also when `sections` mode finds no section to hold out)."""
    train_rows: dict[str, np.ndarray] = {s: rows[s] for s in split.train}
    val_rows: dict[str, np.ndarray] = {s: rows[s] for s in split.val}
    if val_cfg.mode == "spatial_block" or (val_cfg.mode == "sections" and not val_cfg.sections and not split.val):
        for s in split.train:
            coords = np.asarray(adatas[s].obsm[C.OBSM_SPATIAL])[rows[s]]
            tr, va = spatial_block_split(coords, val_cfg.fraction, seed)
            train_rows[s], val_rows[s] = rows[s][tr], rows[s][va]
    elif val_cfg.mode == "sections" and not split.val:
        raise ConfigError("train.val.mode 'sections' needs train.val.sections (whole training sections)")
    return train_rows, val_rows

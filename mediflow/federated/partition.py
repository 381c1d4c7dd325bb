"""Split one data set into simulated hospitals, patient-grouped, so that sites differ the way real
sites do: by nothing (IID), by class balance (label skew) or by film framing."""

from __future__ import annotations

import numpy as np

from mediflow.data.dataset import Samples, _group_ids
from mediflow.errors import MediFlowError

PARTITIONS = ("patient", "label-skew", "framing")


def site_class_shares(n_sites: int, n_classes: int, *, alpha: float, seed: int) -> np.ndarray:
    """(n_classes, n_sites) shares of each class per site, rows summing to 1, drawn from
    Dirichlet(alpha) per class (Hsu et al. 2019, arXiv:1909.06335, the field's usual label-skew
    benchmark; alpha 0.5 is strongly skewed). A floor of 0.1/n_sites keeps every class at every
    site, so each site can still validate both classes."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet([alpha] * n_sites, size=n_classes)
    return 0.9 * shares + 0.1 / n_sites


def border_darkness(samples: Samples, size: int = 64) -> np.ndarray:
    """Per image: mean grey level of the central half minus that of the outer eighth (0-255 units).
    Large when the film sits in a dark frame or collimated field: a cheap proxy for framing."""
    from mediflow.data.images import load_image

    out = np.zeros(len(samples))
    m = size // 8
    for i, p in enumerate(samples.paths):
        a = np.asarray(load_image(p).image.convert("L").resize((size, size)), dtype=np.float64)
        border = np.concatenate([a[:m].ravel(), a[-m:].ravel(), a[:, :m].ravel(), a[:, -m:].ravel()])
        out[i] = a[size // 4: -size // 4, size // 4: -size // 4].mean() - border.mean()
    return out


def partition(samples: Samples, n_sites: int, how: str = "patient", *, alpha: float = 0.5,
              seed: int = 0) -> list[Samples]:
    """`samples` -> n_sites disjoint Samples; every patient's films (and byte-identical copies)
    stay at one site. how: "patient" (IID: groups dealt at random), "label-skew" (class balance per
    site from `site_class_shares`; the same seed gives the same shares, so a site's train and
    validation shards are skewed alike; a class with at least n_sites patients reaches every site)
    or "framing" (groups sorted by `border_darkness`, cut into n_sites runs). Raises MediFlowError
    when there are fewer patients than sites."""
    if how not in PARTITIONS:
        raise MediFlowError(f"unknown partition {how!r}; expected one of {', '.join(PARTITIONS)}")
    groups = _group_ids(samples)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_groups < n_sites:
        raise MediFlowError(f"only {n_groups} patients for {n_sites} sites")
    labels = np.asarray(samples.labels)
    # A group's class: its majority label (groups merged by duplicate bytes can mix classes).
    group_label = np.array([np.bincount(labels[groups == g]).argmax() for g in range(n_groups)])
    rng = np.random.default_rng(seed)
    site_of_group = np.zeros(n_groups, dtype=int)
    if how == "patient":
        order = rng.permutation(n_groups)
        site_of_group[order] = np.arange(n_groups) % n_sites
    elif how == "label-skew":
        shares = site_class_shares(n_sites, len(samples.class_names), alpha=alpha, seed=seed)
        for c in range(len(samples.class_names)):
            members = rng.permutation(np.flatnonzero(group_label == c))
            cuts = np.round(np.cumsum(shares[c])[:-1] * len(members)).astype(int)
            sizes = np.diff(np.concatenate([[0], cuts, [len(members)]]))
            # Rounding can leave a site without a class that has a patient for every site (small
            # validation shards); such a site takes one patient from the largest share.
            while len(members) >= n_sites and (sizes == 0).any():
                sizes[np.argmax(sizes)] -= 1
                sizes[np.argmin(sizes)] += 1
            for s, part in enumerate(np.split(members, np.cumsum(sizes)[:-1])):
                site_of_group[part] = s
    else:
        score = border_darkness(samples)
        g_score = np.array([score[groups == g].mean() for g in range(n_groups)])
        order = np.argsort(g_score, kind="stable")
        for s, part in enumerate(np.array_split(order, n_sites)):
            site_of_group[part] = s
    site_of_sample = site_of_group[groups]
    return [samples.subset(np.flatnonzero(site_of_sample == s).tolist()) for s in range(n_sites)]

"""The official ImageNet-22K -> ImageNet-1K classifier row mapping, derived from the synset lists timm ships.

The official 21,841-way Swin head orders its classes like Google's sorted fall-2011 synset list (timm's
imagenet21k_goog_synsets.txt, 21,843 wnids; NOT timm's imagenet22k_synsets.txt, which drops two wnids from the
middle and so shifts later rows). One 1K synset, n04399382 "teddy, teddy bear", is absent from that release;
the official mapping gives it the only 22K synset sharing one of its lemmas (n03013580 "... slip, teddy").
This reproduces the official map22kto1k.txt exactly.
"""
import functools
import logging
import pkgutil
from typing import Dict, List, Set

log = logging.getLogger(__name__)

IN22K_NUM_CLASSES = 21841


def _lines(name: str) -> List[str]:
    data = pkgutil.get_data("timm.data", f"_info/{name}")
    if data is None:
        raise FileNotFoundError(f"timm does not ship data/_info/{name}; install a timm version that does (>= 0.9)")
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def in22k_to_in1k_indices() -> List[int]:
    """Row of the official 21,841-way head for each of the 1,000 ImageNet-1K classes (in 1K class order)."""
    in22k = _lines("imagenet21k_goog_synsets.txt")
    in1k = _lines("imagenet_synsets.txt")
    row = {wnid: i for i, wnid in enumerate(in22k)}
    lemmas: Dict[str, Set[str]] = {}
    for line in _lines("imagenet_synset_to_lemma.txt"):
        wnid, _, words = line.partition("\t")
        lemmas[wnid] = {w.strip() for w in words.split(",")}
    out = []
    for wnid in in1k:
        if wnid not in row:
            # a 1K class missing from the 22K release takes the unique 22K class sharing a lemma with it
            matches = [i for i, w in enumerate(in22k) if w != wnid and lemmas.get(w, set()) & lemmas[wnid]]
            if len(matches) != 1:
                raise RuntimeError(f"cannot map 1K synset {wnid} to one 22K class (candidates: {matches})")
            row[wnid] = matches[0]
        out.append(row[wnid])
    if max(out) >= IN22K_NUM_CLASSES:
        raise RuntimeError("22K -> 1K mapping points past the 21,841-way head; timm's synset lists changed")
    return out

"""Result types that several stages read: one home, imported by the stages that produce or consume them.

``Tracks`` is the track stage's result (every person on the clip's sample timeline); ``PersonArrays`` holds
per-person arrays aligned with a person's track samples (keypoints, features, GEM outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.tracking import Track


@dataclass
class Tracks:
    """All person tracks of one clip on the clip's sample timeline.

    ``sample_frame_index[i]`` / ``sample_time_s[i]`` give the source frame number and timestamp (s, first
    frame = 0) of sample i; a track's samples index into them.
    """

    fps: float  # rate of the sample timeline (the model rate when resampling, else the source's real rate)
    image_wh: tuple[int, int]  # display size, pixels
    sample_frame_index: np.ndarray  # (S,) int64
    sample_time_s: np.ndarray  # (S,) float64
    people: list[Track]
    source: str  # "detector" or "user"
    no_person: str | None = None  # why the clip has no person track (people is then empty)

    def frame_index(self, person: Track) -> np.ndarray:
        """(T,) source frame numbers of a track's samples."""
        return self.sample_frame_index[person.sample_index]

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-safe meta, arrays) for the artifact store and ``tracks.npz``."""
        arrays: dict[str, np.ndarray] = {
            "sample_frame_index": self.sample_frame_index,
            "sample_time_s": self.sample_time_s,
            "person_id": np.array([p.person_id for p in self.people], dtype=np.int64),
            "track_id": np.array([p.track_id for p in self.people], dtype=np.int64),
        }
        for p in self.people:
            pre = f"person_{p.person_id}/"
            arrays[pre + "sample_index"] = p.sample_index
            arrays[pre + "frame_index"] = self.frame_index(p)
            arrays[pre + "time_s"] = self.sample_time_s[p.sample_index]
            arrays[pre + "xyxy"] = p.xyxy
            arrays[pre + "bbx_xys"] = p.bbx_xys
            arrays[pre + "score"] = p.score
            arrays[pre + "observed"] = p.observed
        meta = {
            "fps": self.fps,
            "image_wh": list(self.image_wh),
            "source": self.source,
            "people": [self.summary(p) for p in self.people],
            "no_person": self.no_person,
        }
        return meta, arrays

    def summary(self, p: Track) -> dict:
        fi = self.frame_index(p)
        return {
            "person_id": p.person_id,
            "track_id": p.track_id,
            "first_frame": int(fi[0]),
            "last_frame": int(fi[-1]),
            "samples": len(p.sample_index),
            "observed": int(p.observed.sum()),
            "mean_score": round(float(p.score[p.observed].mean()), 4) if p.observed.any() else 0.0,
        }

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> Tracks:
        people = []
        for pid, tid in zip(arrays["person_id"].tolist(), arrays["track_id"].tolist(), strict=True):
            pre = f"person_{pid}/"
            people.append(
                Track(
                    person_id=pid,
                    track_id=tid,
                    sample_index=arrays[pre + "sample_index"],
                    xyxy=arrays[pre + "xyxy"],
                    bbx_xys=arrays[pre + "bbx_xys"],
                    score=arrays[pre + "score"],
                    observed=arrays[pre + "observed"],
                )
            )
        return cls(
            fps=float(meta["fps"]),
            image_wh=(int(meta["image_wh"][0]), int(meta["image_wh"][1])),
            sample_frame_index=arrays["sample_frame_index"],
            sample_time_s=arrays["sample_time_s"],
            people=people,
            source=meta["source"],
            no_person=meta.get("no_person"),
        )


@dataclass
class PersonArrays:
    """One stage's per-person arrays, each (T, ...) aligned with that person's track samples.

    ``arrays[person_id][name]``; ``meta`` is JSON-safe stage information.
    """

    meta: dict
    arrays: dict[int, dict[str, np.ndarray]]

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        flat = {f"person_{pid}/{k}": v for pid, d in self.arrays.items() for k, v in d.items()}
        return {**self.meta, "people": sorted(self.arrays)}, flat

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> PersonArrays:
        per: dict[int, dict[str, np.ndarray]] = {int(p): {} for p in meta["people"]}
        for key, v in arrays.items():
            head, name = key.split("/", 1)
            per[int(head.removeprefix("person_"))][name] = v
        return cls({k: v for k, v in meta.items() if k != "people"}, per)

"""Membership-inference risk: can an attacker tell training records from other records?

ART's black-box membership-inference attack sees only what a caller of the model sees — the
predicted probabilities — plus the true label, and learns to separate records the model was
trained on from records it was not. A model that memorised its training data (deep,
unregularised trees or a nearest-neighbour model on little data) gives itself away; a
well-generalising one leaves the attacker at chance. The attack model is a random forest (no
neural-network backend needed).

Non-members are a sample of held-out and test rows; members a sample of the fitting rows with
the same number of each label (the label alone says nothing about membership, and a chance
difference in label shares would be learnt on one half and reversed on the other, pulling the
AUC below chance). The attack is cross-fitted, on halves that split every label evenly: one
attack model trains on the first half of each and scores the second, another the other way
round, so that every sampled record is scored by an attack that did not train on it and the
evaluation uses all of them (twice the records of a single split, for the same cap). Its
figures are the attack ROC AUC (0.5 = chance) and advantage (the largest TPR - FPR over
thresholds), each with a confidence bound:

* AUC: Hanley and McNeil's standard error, ``auc - z * error`` as the lower bound.
* Advantage: the one-sided two-sample Dvoretzky-Kiefer-Wolfowitz bound. The advantage is the
  largest gap between the empirical distributions of member and non-member scores; with ``n``
  and ``m`` records it overstates the true gap by more than
  ``sqrt(ln(1 / (1 - confidence)) * (n + m) / (2 n m))`` with probability at most
  ``1 - confidence`` (the worst case being an attack at chance, whose measured advantage is pure
  noise, often above 0.10 at 200 vs 200 records; the margin is then 0.12).

A gate judged by the lower bounds fails only on a leak shown beyond sampling error; the upper
bounds say how large a leak the records could rule out.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

ATTACK = "ART MembershipInferenceBlackBox (predictions + labels, random-forest attacker)"
# Fewest member (and non-member) records the attack is run on: with fewer, half of them would
# train an attack model on a handful of records and no leak could be told from noise.
MIN_ATTACK_RECORDS = 50


# Records the attack trains on from which its forest has 100 trees rather than 25.
_FULL_FOREST_RECORDS = 1_000


@dataclass(frozen=True)
class PrivacyResult:
    """Outcome of the membership-inference attack.

    Attributes:
        attack: Which attack ran.
        members: Member records used (each scored by the attack model that did not train on
            it).
        non_members: Non-member records used.
        auc: Attack ROC AUC on those records.
        advantage: Attack advantage (max TPR - FPR).
        confidence: Confidence of the bounds.
        auc_bounds: One-sided lower and upper confidence bounds of the AUC.
        advantage_bounds: One-sided lower and upper confidence bounds of the advantage.
    """

    attack: str
    members: int
    non_members: int
    auc: float
    advantage: float
    confidence: float = 0.95
    auc_bounds: tuple[float, float] = (0.0, 1.0)
    advantage_bounds: tuple[float, float] = (0.0, 1.0)

    def exceeds(self, max_auc: float, max_advantage: float) -> list[str]:
        """Why the attack shows a leak beyond the limits at this confidence, if it does."""
        found = []
        if self.auc_bounds[0] > max_auc:
            found.append(
                f"attack AUC {self.auc:.3f} > {max_auc} beyond sampling error (at "
                f"{self.confidence:.0%} confidence at least {self.auc_bounds[0]:.3f})"
            )
        if self.advantage_bounds[0] > max_advantage:
            found.append(
                f"attack advantage {self.advantage:.3f} > {max_advantage} beyond sampling "
                f"error (at {self.confidence:.0%} confidence at least "
                f"{self.advantage_bounds[0]:.3f})"
            )
        return found

    def meaning(self, max_auc: float, max_advantage: float) -> str:
        """One sentence on what the figures mean, for people."""
        level = f"{self.confidence:.0%}"
        ruled_out = self.auc_bounds[1] <= max_auc and self.advantage_bounds[1] <= max_advantage
        return (
            f"On {self.members} training records and {self.non_members} others, the attack "
            f"reached AUC {self.auc:.3f} (at {level} confidence between {self.auc_bounds[0]:.3f} "
            f"and {self.auc_bounds[1]:.3f}) and advantage {self.advantage:.3f} (between "
            f"{self.advantage_bounds[0]:.3f} and {self.advantage_bounds[1]:.3f}). The gate fails "
            f"only when a lower bound exceeds its limit (AUC {max_auc}, advantage "
            f"{max_advantage}), i.e. on a leak shown beyond sampling error; "
            + (
                "the upper bounds are within the limits, so a leak beyond them is ruled out."
                if ruled_out
                else "an upper bound exceeds its limit, so these records cannot rule out a "
                "leak beyond it (more records would narrow the bounds)."
            )
        )


def advantage_margin(members: int, non_members: int, confidence: float) -> float:
    """How far the measured advantage may exceed the true one (two-sample DKW bound)."""
    if members < 1 or non_members < 1:
        return 1.0
    return math.sqrt(
        math.log(1 / (1 - confidence)) * (members + non_members) / (2 * members * non_members)
    )


def evaluate_membership(
    model: Any,
    members_x: Any,
    members_y: "np.ndarray",
    others_x: Any,
    others_y: "np.ndarray",
    *,
    cap: int,
    seed: int,
    confidence: float = 0.95,
) -> PrivacyResult:
    """Run the black-box membership-inference attack against a fitted model pipeline.

    Args:
        model: The fitted pipeline (``preprocess`` then ``model``).
        members_x: Inputs the model was fitted on.
        members_y: Their labels.
        others_x: Inputs it never saw.
        others_y: Their labels.
        cap: Most records taken from each group.
        seed: Seed of the sampling and the attack models.
        confidence: Confidence of the bounds (one-sided each).

    Returns:
        The result.

    Raises:
        ValueError: When fewer than `MIN_ATTACK_RECORDS` members or non-members are given.
    """
    import numpy as np
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import BlackBoxClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score, roc_curve

    from secure_pipeline.training.evaluation import auc_standard_error, normal_quantile

    size = int(min(cap, len(members_y), len(others_y)))
    if size < MIN_ATTACK_RECORDS:
        raise ValueError(
            f"the membership attack needs at least {MIN_ATTACK_RECORDS} training records and "
            f"{MIN_ATTACK_RECORDS} others, found {len(members_y)} and {len(others_y)}"
        )
    rng = np.random.default_rng(seed)
    # Members matched to the non-members' labels, sorted by label, so that the label share is the
    # same in every group and half: the label alone says nothing about membership, and a chance
    # difference in label shares would otherwise be learnt on one half and reversed on the other.
    other_rows = np.sort(rng.choice(len(others_y), size=size, replace=False))
    other_rows = other_rows[np.argsort(np.asarray(others_y)[other_rows], kind="stable")]
    member_rows = _matched(rng, np.asarray(members_y), np.asarray(others_y)[other_rows])
    preprocess, estimator = model.named_steps["preprocess"], model.named_steps["model"]
    xm = np.asarray(preprocess.transform(members_x.iloc[member_rows]), dtype="float64")
    xo = np.asarray(preprocess.transform(others_x.iloc[other_rows]), dtype="float64")
    ym, yo = np.asarray(members_y)[member_rows], np.asarray(others_y)[other_rows]
    victim = BlackBoxClassifier(
        predict_fn=estimator.predict_proba,
        input_shape=(xm.shape[1],),
        nb_classes=2,
        fuzzy_float_compare=True,
    )
    member_scores, other_scores = np.empty(size), np.empty(size)
    for (mt, ms), (ot, os_) in zip(_halves(ym), _halves(yo), strict=True):
        attack = MembershipInferenceBlackBox(
            victim, input_type="prediction", attack_model_type="rf"
        )
        # ART builds its random forest unseeded (and cannot take an unfitted forest as
        # argument: its parameter check tests the model's truth value); swap in a seeded one.
        # A forest over two or three attack features (the scores and the label). On a few
        # hundred records 25 trees judge as 100 do (1,000-row tables, 4 seeds, chance-level
        # and memorising models: AUC within 0.007, advantage within 0.025, against a
        # sampling margin of 0.12) at a quarter of the time; 100 from a thousand records on.
        trees = 100 if len(mt) + len(ot) >= _FULL_FOREST_RECORDS else 25
        attack.attack_model = RandomForestClassifier(
            n_estimators=trees, random_state=seed, n_jobs=1
        )
        attack.fit(x=xm[mt], y=ym[mt], test_x=xo[ot], test_y=yo[ot])
        member_scores[ms] = _membership(attack.infer(xm[ms], ym[ms], probabilities=True))
        other_scores[os_] = _membership(attack.infer(xo[os_], yo[os_], probabilities=True))
    scores = np.concatenate([member_scores, other_scores])
    truth = np.concatenate([np.ones(size), np.zeros(size)])
    fpr, tpr, _ = roc_curve(truth, scores)
    auc = float(roc_auc_score(truth, scores))
    advantage = float(max(np.max(tpr - fpr), 0.0))
    z = normal_quantile(confidence)
    auc_error = auc_standard_error(auc, size, size)
    margin = advantage_margin(size, size, confidence)
    return PrivacyResult(
        attack=ATTACK,
        members=size,
        non_members=size,
        auc=auc,
        advantage=advantage,
        confidence=confidence,
        auc_bounds=(max(0.0, auc - z * auc_error), min(1.0, auc + z * auc_error)),
        advantage_bounds=(max(0.0, advantage - margin), min(1.0, advantage + margin)),
    )


def _matched(rng: Any, labels: "np.ndarray", wanted: "np.ndarray") -> "np.ndarray":
    """Rows of ``labels`` with as many of each label as ``wanted`` has, in label order."""
    import numpy as np

    picked = []
    for label in np.unique(wanted):
        candidates = np.flatnonzero(labels == label)
        count = int((wanted == label).sum())
        if len(candidates) < count:  # too few of a label: an unmatched sample, in label order
            rows = rng.choice(len(labels), size=len(wanted), replace=False)
            return rows[np.argsort(labels[rows], kind="stable")]
        picked.append(np.sort(rng.choice(candidates, size=count, replace=False)))
    return np.concatenate(picked)


def _halves(labels: "np.ndarray") -> tuple[tuple["np.ndarray", "np.ndarray"], ...]:
    """Two halves of the positions, each with half of every label (alternating within it)."""
    import numpy as np

    rank = np.empty(len(labels), dtype="int64")
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    first = np.flatnonzero(rank % 2 == 0)
    second = np.flatnonzero(rank % 2 == 1)
    return ((first, second), (second, first))


def _membership(scores: "np.ndarray") -> "np.ndarray":
    """The attack's probability of 'member', whatever shape ART returns it in."""
    import numpy as np

    scores = np.asarray(scores, dtype="float64")
    return scores[:, -1] if scores.ndim == 2 and scores.shape[1] > 1 else scores.ravel()

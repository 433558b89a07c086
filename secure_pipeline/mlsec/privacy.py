"""Membership-inference risk: can an attacker tell training records from other records?

ART's black-box membership-inference attack sees only what a caller of the model sees — the
predicted probabilities — plus the true label, and learns to separate records the model was
trained on from records it was not. A model that memorised its training data (deep,
unregularised trees on little data) gives itself away; a well-generalising one leaves the
attacker at chance. The attack model is a random forest (no neural-network backend needed).

Members are a sample of the fitting rows; non-members a sample of held-out and test rows, as
many as members. Half of each trains the attack, the other half measures it: attack ROC AUC
(0.5 = chance) and advantage (max over thresholds of TPR - FPR).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class PrivacyResult:
    """Outcome of the membership-inference attack.

    Attributes:
        attack: Which attack ran.
        members: Member records used (attack training + evaluation).
        non_members: Non-member records used.
        auc: Attack ROC AUC on the evaluation half.
        advantage: Attack advantage (max TPR - FPR) on the evaluation half.
    """

    attack: str
    members: int
    non_members: int
    auc: float
    advantage: float


def evaluate_membership(
    model: Any,
    members_x: Any,
    members_y: "np.ndarray",
    others_x: Any,
    others_y: "np.ndarray",
    *,
    cap: int,
    seed: int,
) -> PrivacyResult:
    """Run the black-box membership-inference attack against a fitted model pipeline.

    Args:
        model: The fitted pipeline (``preprocess`` then ``model``).
        members_x: Inputs the model was fitted on.
        members_y: Their labels.
        others_x: Inputs it never saw.
        others_y: Their labels.
        cap: Most records taken from each group.
        seed: Seed of the sampling and the attack model.

    Returns:
        The result.
    """
    import numpy as np
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import BlackBoxClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    size = int(min(cap, len(members_y), len(others_y)))
    member_rows = rng.choice(len(members_y), size=size, replace=False)
    other_rows = rng.choice(len(others_y), size=size, replace=False)
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
    attack = MembershipInferenceBlackBox(victim, input_type="prediction", attack_model_type="rf")
    # ART builds its random forest unseeded (and cannot take an unfitted forest as argument:
    # its parameter check tests the model's truth value); swap in a seeded one.
    attack.attack_model = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    half = size // 2
    attack.fit(x=xm[:half], y=ym[:half], test_x=xo[:half], test_y=yo[:half])
    member_scores = attack.infer(xm[half:], ym[half:], probabilities=True)
    other_scores = attack.infer(xo[half:], yo[half:], probabilities=True)
    scores = np.concatenate([_membership(member_scores), _membership(other_scores)])
    truth = np.concatenate([np.ones(size - half), np.zeros(size - half)])
    fpr, tpr, _ = roc_curve(truth, scores)
    return PrivacyResult(
        attack="ART MembershipInferenceBlackBox (predictions + labels, random-forest attacker)",
        members=size,
        non_members=size,
        auc=float(roc_auc_score(truth, scores)),
        advantage=float(np.max(tpr - fpr)),
    )


def _membership(scores: "np.ndarray") -> "np.ndarray":
    """The attack's probability of 'member', whatever shape ART returns it in."""
    import numpy as np

    scores = np.asarray(scores, dtype="float64")
    return scores[:, -1] if scores.ndim == 2 and scores.shape[1] > 1 else scores.ravel()

"""What one worker process holds for the lifetime of the app."""

from __future__ import annotations

from dataclasses import dataclass

from mailsift.service.learner import Learner
from mailsift.service.settings import Settings
from mailsift.service.trainlog import TrainingLog


@dataclass(slots=True)
class ServiceState:
    settings: Settings
    trainlog: TrainingLog
    learner: Learner

    @property
    def model_ready(self) -> bool:
        n = self.settings.min_examples_per_class
        model = self.learner.model
        return model.n_ham >= n and model.n_spam >= n

"""Gymnasium environments, task distributions and the backend-neutral rollout runner."""

from shared.env_runner.environment import Environment, MetaEnvironment
from shared.env_runner.envs import register_envs
from shared.env_runner.tasks import DISTRIBUTIONS, get_distribution

register_envs()

__all__ = ["DISTRIBUTIONS", "Environment", "MetaEnvironment", "get_distribution", "register_envs"]

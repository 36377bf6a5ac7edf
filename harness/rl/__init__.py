"""Reinforcement learning tasks: PPO (ppo.py: the algorithm; rollout.py, envs.py: acting in gymnasium
environments; task.py: the "ppo" task of train.py)."""

"""Membership backend for a brand inside WeChat."""

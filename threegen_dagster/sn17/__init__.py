"""Subnet 17 (404-GEN): the legacy validator protocol, validator selection and the submit decision."""

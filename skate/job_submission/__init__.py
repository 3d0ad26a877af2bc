"""Submitting jobs to a running cluster (follows Ray's ``ray.job_submission``).

``JobSubmissionClient(address)`` submits an entrypoint command that the
head runs (its ``skate.init()`` joins the cluster), follows its status and
output, and stops or deletes it.  See ``skate job --help`` for the CLI.
"""

from skate._private.job_client import (
    DriverInfo,
    JobDetails,
    JobInfo,
    JobStatus,
    JobSubmissionClient,
    JobType,
)

__all__ = ["DriverInfo", "JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType"]

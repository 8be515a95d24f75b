"""The agent's durable journal: once-only job acceptance, atomic results, the outbox, restarts."""

from pathlib import Path

from agent.journal import JobState, Journal
from schemas import JobPhase, OtaCommand, TopicKind
from tests.schemas.examples import example


def _command() -> OtaCommand:
    command = example(TopicKind.GATEWAY_COMMAND)
    assert isinstance(command, OtaCommand)
    return command


def test_a_job_id_is_accepted_once_even_across_restarts(tmp_path: Path) -> None:
    """A duplicate job id is refused, also after the journal is reopened."""
    journal = Journal(tmp_path / "j.db")
    assert journal.accept(_command(), 1.0)
    assert not journal.accept(_command(), 2.0)
    journal.close()
    reopened = Journal(tmp_path / "j.db")
    assert not reopened.accept(_command(), 3.0)
    entry = reopened.get(_command().job_id)
    assert entry is not None
    assert entry.command == _command()
    reopened.close()


def test_unfinished_jobs_survive_a_restart_with_their_phase_and_uploads(tmp_path: Path) -> None:
    """A job interrupted mid-upload comes back with its phase and flash count."""
    journal = Journal(tmp_path / "j.db")
    journal.accept(_command(), 1.0)
    journal.set_phase(_command().job_id, JobPhase.UPLOADING)
    assert journal.count_upload(_command().job_id) == 1
    journal.close()
    reopened = Journal(tmp_path / "j.db")
    [entry] = reopened.unfinished()
    assert (entry.state, entry.phase, entry.uploads) == (JobState.RUNNING, JobPhase.UPLOADING, 1)
    reopened.close()


def test_a_result_stays_in_the_outbox_until_acknowledged(tmp_path: Path) -> None:
    """Finishing queues the result; it survives a restart and disappears only when acknowledged."""
    journal = Journal(tmp_path / "j.db")
    journal.accept(_command(), 1.0)
    journal.finish(_command().job_id, "succeeded", 5.0, ("t/result", b"{}", 1, False))
    assert journal.unfinished() == []
    journal.close()
    reopened = Journal(tmp_path / "j.db")
    [message] = reopened.pending_messages()
    assert (message.topic, message.payload, message.qos, message.retain) == ("t/result", b"{}", 1, False)
    reopened.acknowledge(message.row_id)
    assert reopened.pending_messages() == []
    entry = reopened.get(_command().job_id)
    assert entry is not None
    assert (entry.state, entry.outcome) == (JobState.FINISHED, "succeeded")
    reopened.close()


def test_a_finished_job_never_goes_back_to_running(tmp_path: Path) -> None:
    """A late phase update cannot reopen a finished job."""
    journal = Journal(tmp_path / "j.db")
    journal.accept(_command(), 1.0)
    journal.finish(_command().job_id, "failed", 2.0, ("t", b"x", 1, False))
    journal.set_phase(_command().job_id, JobPhase.CONFIRMING)
    entry = journal.get(_command().job_id)
    assert entry is not None
    assert entry.state is JobState.FINISHED
    journal.close()


def test_prune_forgets_old_finished_jobs_only(tmp_path: Path) -> None:
    """Pruning drops finished jobs older than the cut-off and keeps running ones."""
    journal = Journal(tmp_path / "j.db")
    journal.accept(_command(), 1.0)
    journal.finish(_command().job_id, "failed", 2.0, ("t", b"x", 1, False))
    assert journal.prune(finished_before_s=10.0) == 1
    assert journal.get(_command().job_id) is None
    journal.close()

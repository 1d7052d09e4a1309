"""Session directories: private, locked by their owner, removed by the next start once it is dead."""

import os
import stat
import subprocess
import sys
import textwrap

from anyray.adapters.node.session import Session, remove_stale_sessions


def test_a_session_directory_is_private_and_removed_at_close(tmp_path):
    session = Session(root=str(tmp_path))
    assert stat.S_IMODE(os.stat(session.path).st_mode) == 0o700
    assert len(session.secret) == 32 and session.secret.hex() not in repr(session)
    open(session.file("arena"), "wb").close()
    session.close()
    assert not os.path.exists(session.path)


def test_a_live_session_is_left_alone(tmp_path):
    live = Session(root=str(tmp_path))
    assert remove_stale_sessions(str(tmp_path)) == []
    assert os.path.isdir(live.path)
    live.close()


def test_the_directory_of_a_killed_owner_is_removed_by_the_next_session(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from anyray.adapters.node.session import Session
        s = Session(root={str(tmp_path)!r})
        open(s.file("arena"), "wb").write(b"x" * 1024)
        print(s.path, flush=True)
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9
    left = proc.stdout.strip()
    assert os.path.isdir(left)
    fresh = Session(root=str(tmp_path))
    assert not os.path.exists(left)
    assert os.path.isdir(fresh.path)
    fresh.close()

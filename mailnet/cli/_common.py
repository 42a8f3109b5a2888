# -*- test-case-name: tests.test_admin -*-
"""
Helpers shared by mailnet's command-line tools: the one error dispatcher,
argument parsing with injectable output, and password prompting.

User-facing errors are L{MailnetError} subclasses whose docstrings are the
message (see L{mailnet.errors}); the dispatcher prints them as
C{PROGRAM: error: MESSAGE} and exits 1.  Usage errors exit 2, as argparse
does.
"""

import argparse
import os
import sqlite3
from contextlib import redirect_stderr, redirect_stdout
from typing import IO, Callable, List, Optional, Sequence, Tuple

from mailnet.errors import MailnetError

try:
    import termios
except ImportError:  # Windows
    termios = None  # type: ignore[assignment]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
EXIT_PIPE = 141  # the reader of our output went away: 128 + SIGPIPE, as git


class PasswordMismatch(MailnetError):
    """the two passwords differ; nothing was changed"""


class EmptyPassword(MailnetError):
    """an empty password is not allowed; nothing was changed"""


class NoPasswordSource(MailnetError):
    """standard input is not a terminal, so there is no one to ask for the password; pass --password-stdin to read it from standard input"""


class NoPasswordGiven(MailnetError):
    """no password given (end of input); nothing was changed"""


def parseArguments(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], stdout: IO[str], stderr: IO[str]
) -> Tuple[Optional[argparse.Namespace], int]:
    """
    Parse the command line, sending argparse's help and usage errors to the
    given streams instead of exiting.

    @return: C{(namespace, 0)}, or C{(None, exit code)} when argparse
        finished the job itself (C{--help}: 0, a usage error: 2).
    """
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            return parser.parse_args(argv), EXIT_OK
    except SystemExit as e:
        code = e.code
        return None, code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)


def dispatch(program: str, command: Callable[[], Optional[int]], stderr: IO[str]) -> int:
    """
    Run a command and turn the errors a person can act on into one line on
    stderr.

    @return: the command's exit code (0 if it returned L{None}), or 1 after
        an error.
    """
    try:
        code = command()
    except MailnetError as e:
        _report(program, str(e), stderr)
        return EXIT_ERROR
    except sqlite3.Error as e:
        _report(program, "the account store failed: %s" % (e,), stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        raise  # our reader went away: see endQuietly
    except OSError as e:
        if e.filename and e.strerror:
            _report(program, "%s: %s" % (e.filename, e.strerror), stderr)
        else:
            _report(program, str(e), stderr)
        return EXIT_ERROR
    return EXIT_OK if code is None else code


def _report(program: str, message: str, stderr: IO[str]) -> None:
    stderr.write("%s: error: %s\n" % (program, message))
    stderr.flush()


def isTerminal(stream: IO[str]) -> bool:
    """@return: whether C{stream} is a terminal (false for anything odd)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


_isatty = isTerminal


def silenceClosedPipe(stream: IO[str]) -> None:
    """
    The reader of C{stream} has gone (C{mailnet-cli list | head -1}): point
    its descriptor at the null device, so that the interpreter's last flush
    of what is still buffered does not complain on stderr.  Output that
    nobody reads is dropped, as C{git log | head} drops it.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def endQuietly(program: str, command: Callable[[], int], stdout: IO[str], stderr: IO[str]) -> int:
    """
    Run C{command} (the whole of a tool's C{main}) so that Ctrl-C ends it
    with one line, C{PROGRAM: interrupted}, and exit status 130, and a
    closed pipe on stdout ends it quietly with status 141: never a
    traceback for either.
    """
    try:
        code = command()
        stdout.flush()  # a closed pipe shows here, while we can still catch it
        return code
    except KeyboardInterrupt:
        if isTerminal(stderr):
            stderr.write("\n")  # end the line of a prompt
        stderr.write("%s: interrupted\n" % (program,))
        stderr.flush()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silenceClosedPipe(stdout)
        return EXIT_PIPE


def readHidden(prompt: str, stdin: IO[str], stderr: IO[str]) -> str:
    """
    Ask for a secret on a terminal: the prompt goes to stderr, and echo is
    turned off while the answer is typed, when stdin is a real terminal.

    @return: the line typed, without its line ending.
    @raise NoPasswordGiven: end of input.
    """
    stderr.write(prompt)
    stderr.flush()
    fd: Optional[int] = None
    old: Optional[List] = None
    if termios is not None:
        try:
            fd = stdin.fileno()
            old = termios.tcgetattr(fd)
        except (AttributeError, OSError, ValueError, termios.error):
            fd = old = None
    if fd is not None and old is not None:
        new = list(old)
        new[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, new)
    try:
        line = stdin.readline()
    finally:
        if fd is not None and old is not None:
            termios.tcsetattr(fd, termios.TCSAFLUSH, old)
            stderr.write("\n")
    if not line:
        raise NoPasswordGiven()
    return line.rstrip("\r\n")


def readNewPassword(what: str, stdin: IO[str], stderr: IO[str], fromStdin: bool) -> str:
    """
    Get a new password: the first line of stdin with C{fromStdin}, else two
    prompts on the terminal that must agree.  Never from the command line,
    where other users could read it in the process list.

    @param what: who the password is for, for the prompt.
    @raise EmptyPassword: it is empty.
    @raise PasswordMismatch: the two entries differ.
    @raise NoPasswordSource: stdin is not a terminal and C{fromStdin} is
        false.
    """
    if fromStdin:
        line = stdin.readline()
        if not line:
            raise NoPasswordGiven()
        password = line.rstrip("\r\n")
        if not password:
            raise EmptyPassword()
        return password
    if not _isatty(stdin):
        raise NoPasswordSource()
    password = readHidden("New password for %s: " % (what,), stdin, stderr)
    if not password:
        raise EmptyPassword()
    again = readHidden("Retype the password: ", stdin, stderr)
    if again != password:
        raise PasswordMismatch()
    return password

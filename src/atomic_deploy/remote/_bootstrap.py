"""The few lines the host's python3 runs first: ``python3 -c BOOTSTRAP``.

Nothing the user typed is in the command line ssh hands to the remote shell: the bootstrap is a
constant, and its request (root, the tool's name and digest, the arguments) arrives as the first
line of stdin, as JSON. So no path, message or option ever meets a remote shell's quoting.
``probe`` and ``install`` answer with one line and wait for the next request on the same
channel (end of input ends it), so the probe, an upload and the tool's run share one ssh
session: one remote shell and one Python start instead of three.

It must parse on any Python so that an old one gets a clear line rather than a SyntaxError: no
f-strings, no annotations, nothing newer than Python 2.7's grammar. Requests:

- ``probe``: the Python version, whether ROOT holds this exact tool, whether rsync is on PATH,
  whether the current release's manifest records content digests, and
  ROOT/atomic-deploy.toml's bytes (parsed on the deploying machine, so the host's python
  needs no TOML parser).
- ``install``: the tool's bytes follow the line (``size`` of them); written under a temporary
  name in ``ROOT/.atomic-deploy/bin/`` (mode 0700), digest checked, flushed, renamed into place.
  Only deploy and prepare (``create``) may create ROOT, and only if its parent exists.
- ``run``: check the installed tool's digest, then run it in this process with ``argv``; the
  rest of stdin is the tool's (the session protocol). It runs from the compiled copy made
  beside it at install (each module's bytecode for this Python; made again by a mutating
  command for another Python), else from the archive itself.
- ``memrun``: the tool's bytes follow the line; run it from memory, writing nothing (read-only
  commands on a root that does not hold the tool).

Exit status 96: Python too old; 97: a request the bootstrap refused (message on stderr).
"""

from __future__ import annotations

TOOL_DIR = ".atomic-deploy/bin"
EXIT_OLD_PYTHON = 96
EXIT_REFUSED = 97
KEEP_TOOLS = 3  # versions kept side by side in ROOT/.atomic-deploy/bin (several deployers)

BOOTSTRAP = r'''
import sys, os
def fail(msg, code):
    sys.stderr.write("atomic-deploy: error: " + msg + "\n")
    sys.stderr.flush()
    os._exit(code)
if sys.version_info < (3, 9):
    fail("%s on this host is Python %s; atomic-deploy needs Python 3.9 or newer there "
         "(--remote-python PATH names another interpreter)"
         % (sys.executable or "python", sys.version.split()[0]), 96)
import hashlib, json, stat, shutil
def readline():
    b = b""
    while not b.endswith(b"\n"):
        c = os.read(0, 1)
        if not c:
            break
        b += c
    return b
def readn(n):
    parts = []
    while n > 0:
        c = os.read(0, min(n, 1 << 16))
        if not c:
            fail("the tool's upload was cut short", 97)
        parts.append(c)
        n -= len(c)
    return b"".join(parts)
def digest(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()
def run(path_or_data, argv):
    sys.argv = ["atomic-deploy"] + argv
    if isinstance(path_or_data, bytes):
        import io, zipfile, importlib.abc, importlib.util
        z = zipfile.ZipFile(io.BytesIO(path_or_data))
        names = set(z.namelist())
        class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                base = name.replace(".", "/")
                for fn, pkg in ((base + "/__init__.py", True), (base + ".py", False)):
                    if fn in names:
                        return importlib.util.spec_from_loader(name, self, origin=fn,
                                                               is_package=pkg)
                return None
            def create_module(self, spec):
                return None
            def exec_module(self, mod):
                fn = mod.__spec__.origin
                mod.__file__ = "<atomic-deploy>/" + fn
                exec(compile(z.read(fn), mod.__file__, "exec"), mod.__dict__)
        sys.meta_path.insert(0, Finder())
    else:
        sys.path.insert(0, path_or_data)
    from atomic_deploy._fastcli import run as main
    main()
def compiled(path):
    return path + "." + sys.implementation.cache_tag + ".zip"
def make_compiled(path):
    # The same archive with each module's bytecode for this Python beside it (an unchecked
    # hash-based .pyc, which zipimport takes as it is): about 60 ms less for every command
    # than compiling the modules again each time. Made from the verified file; temp + rename.
    import zipfile, marshal, importlib.util
    out = compiled(path)
    tmp = "%s.%d.tmp" % (out, os.getpid())
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                dst.writestr(info, data)
                if info.filename.endswith(".py"):
                    code = compile(data, info.filename, "exec", dont_inherit=True)
                    pyc = (importlib.util.MAGIC_NUMBER + b"\x01\x00\x00\x00" + b"\x00" * 8
                           + marshal.dumps(code))
                    dst.writestr(zipfile.ZipInfo(info.filename + "c", info.date_time), pyc)
        os.chmod(tmp, 0o700)
        os.rename(tmp, out)
    except (OSError, SyntaxError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass
served = 0
while True:
    line = readline()
    if not line and served:
        break  # the deploying machine asked what it needed (probe, install) and went
    req = json.loads(line.decode("utf-8", "surrogateescape") or "null")
    if not isinstance(req, dict):
        fail("no request on stdin", 97)
    served += 1
    root = os.path.abspath(req["root"])
    state = os.path.join(root, ".atomic-deploy")
    tools = os.path.join(state, "bin")
    tool = os.path.join(tools, req["name"])
    mode = req["mode"]
    if mode == "probe":
        rsync = shutil.which("rsync")
        out = {"python": list(sys.version_info[:3]), "executable": sys.executable,
               "have": digest(tool) == req["sha256"], "rsync": rsync is not None,
               "root": os.path.isdir(root), "config": None}
        # Whether the current release's manifest records content digests: the deploying
        # machine then starts hashing the build while the session starts (a hint; the session
        # decides under the lock).
        out["digests"] = False
        try:
            cur = os.path.basename(os.readlink(os.path.join(root, "current")).rstrip("/"))
            with open(os.path.join(state, "manifests", cur + ".jsonl"), "rb") as f:
                out["digests"] = bool(json.loads(f.readline().decode("ascii")).get("digest"))
        except (OSError, ValueError, AttributeError):
            pass
        conf = os.path.join(root, "atomic-deploy.toml")
        if os.path.isfile(conf) and os.path.getsize(conf) < (1 << 20):
            import base64
            try:
                with open(conf, "rb") as f:
                    out["config"] = base64.b64encode(f.read()).decode("ascii")
            except OSError as e:
                out["config_error"] = e.strerror
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    elif mode == "install":
        data = readn(int(req["size"]))
        if hashlib.sha256(data).hexdigest() != req["sha256"]:
            fail("the tool's upload arrived damaged (digest mismatch)", 97)
        if not os.path.isdir(root):
            if not req.get("create"):
                fail("ROOT %r does not exist" % root, 2)
            if not os.path.isdir(os.path.dirname(root)):
                fail("cannot create ROOT %r: its parent folder does not exist" % root, 2)
        for d, dmode in ((root, 0o755), (state, 0o755), (tools, 0o700)):
            try:
                os.mkdir(d, dmode)
            except OSError as e:
                if not os.path.isdir(d):
                    fail("cannot create %r: %s" % (d, e.strerror), 2)
            st = os.lstat(d)
            if d != root and (stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode)):
                fail("%r is not a folder (a symlink?); refusing to use it" % d, 2)
            if d != root and (st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022):
                fail("%r is writable by other users or owned by another user; refusing to use "
                     "it" % d, 2)
        tmp = os.path.join(tools, ".%s.%d.tmp" % (req["name"], os.getpid()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o700)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, tool)
        make_compiled(tool)
        dfd = os.open(tools, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        old = []
        for name in os.listdir(tools):
            p = os.path.join(tools, name)
            if name.startswith("atomic-deploy-") and name.endswith(".pyz") and p != tool and \
                    not name.startswith(".") and os.path.isfile(p):
                old.append((os.lstat(p).st_mtime, p))
        for _, p in sorted(old)[:max(0, len(old) - KEEPN + 1)]:
            for q in [p] + [os.path.join(tools, n) for n in os.listdir(tools)
                            if n.startswith(os.path.basename(p) + ".")]:
                os.unlink(q)
        sys.stdout.write(json.dumps({"installed": tool}) + "\n")
        sys.stdout.flush()
    elif mode == "run":
        if digest(tool) != req["sha256"]:
            fail("%r is missing or is not the tool it should be (its sha256 differs); "
                 "refusing to run it" % tool, 97)
        fast = compiled(tool)
        if not os.path.isfile(fast) and req.get("mutating"):
            make_compiled(tool)  # another python3 than the one that installed it
        run(fast if os.path.isfile(fast) else tool, req["argv"])
        break
    elif mode == "memrun":
        data = readn(int(req["size"]))
        if hashlib.sha256(data).hexdigest() != req["sha256"]:
            fail("the tool's upload arrived damaged (digest mismatch)", 97)
        run(data, req["argv"])
        break
    else:
        fail("unknown request %r" % mode, 97)
'''.replace("KEEPN", str(KEEP_TOOLS))

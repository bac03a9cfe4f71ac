package main_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// awaitLine reads r until a line contains want and returns the lines read;
// it fails the test after waitTimeout. The rest of r is drained in the
// background so the writer never blocks.
func awaitLine(t *testing.T, r io.Reader, want string) []string {
	t.Helper()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var seen []string
	timeout := time.After(waitTimeout)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("output ended before %q; got %q", want, seen)
			}
			seen = append(seen, l)
			if strings.Contains(l, want) {
				go func() {
					for range lines {
					}
				}()
				return seen
			}
		case <-timeout:
			t.Fatalf("no %q within %v; got %q", want, waitTimeout, seen)
		}
	}
}

// TestDemoEndsWithParent: the README's first command is "go run
// ./cmd/smimefilter demo", and go run does not pass SIGTERM on to the
// daemon it started. Killing the parent must end the daemon, cleanly
// (exit status 0, as after SIGTERM).
func TestDemoEndsWithParent(t *testing.T) {
	// Orphans come to this process instead of PID 1, so it can wait for
	// the daemon once its parent is gone.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

	parent := exec.Command("/bin/sh", "-c", `"$0" demo -dir "$1" -address 127.0.0.1:0 & echo "pid $!"; wait`, daemonBin, t.TempDir())
	parent.Env = cleanEnv()
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	seen := awaitLine(t, out, "listening for LMTP")
	pid, err := strconv.Atoi(strings.TrimPrefix(seen[0], "pid "))
	if err != nil {
		t.Fatalf("first line %q does not name the daemon's pid", seen[0])
	}

	parent.Process.Kill()
	parent.Wait() // from here on the daemon is this process's child

	exited := make(chan unix.WaitStatus, 1)
	go func() {
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err != unix.EINTR {
				exited <- ws
				return
			}
		}
	}()
	select {
	case ws := <-exited:
		if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("daemon after its parent was killed: got wait status %v, want exit status 0", ws)
		}
	case <-time.After(waitTimeout):
		unix.Kill(pid, unix.SIGKILL)
		<-exited
		t.Fatalf("daemon still running %v after its parent was killed", waitTimeout)
	}
}

// TestDemoOutlivesParentThread: the kernel's parent-death signal
// (PR_SET_PDEATHSIG) comes when the thread that started the demo ends,
// which in a multi-threaded parent like go run can happen while the parent
// process lives on. The demo must go on serving then.
func TestDemoOutlivesParentThread(t *testing.T) {
	cmd := exec.Command(daemonBin, "demo", "-dir", t.TempDir(), "-address", "127.0.0.1:0")
	cmd.Env = cleanEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The demo is started from a thread of its own, which ends once the
	// demo listens (and so has asked for the signal). fork(2) makes the
	// calling thread the child's parent.
	started := make(chan error, 1)
	release := make(chan struct{})
	tid := make(chan int, 1)
	onEndingThread(func(id int) {
		tid <- id
		started <- cmd.Start()
		<-release
	})
	if err := <-started; err != nil {
		close(release)
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	seen := awaitLine(t, out, "listening for LMTP")
	var addr string
	if _, err := fmt.Sscanf(seen[len(seen)-1], "smimefilter demo: listening for LMTP on %s", &addr); err != nil {
		t.Fatalf("no address in %q: %v", seen[len(seen)-1], err)
	}
	addr = strings.TrimSuffix(addr, ",")

	close(release)
	// The thread is gone from /proc only after its exit sent the signal.
	task := fmt.Sprintf("/proc/self/task/%d", <-tid)
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there %v after its goroutine returned", task, waitTimeout)
		}
	}
	// With the signal being SIGTERM, the log would say "shutting down"
	// and end here.
	awaitLine(t, errOut, "the process lives on: still running")

	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatalf("the demo no longer listens after its parent thread ended: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	if code, msg, err := textproto.NewReader(bufio.NewReader(c)).ReadResponse(0); code != 220 {
		t.Errorf("greeting after the parent thread ended: got %d %s (%v), want 220", code, msg, err)
	}
}

// onEndingThread runs f in a goroutine locked to an OS thread that ends
// when f returns (a goroutine that returns while locked takes its thread
// with it), and passes f that thread's id.
func onEndingThread(f func(tid int)) {
	go func() {
		runtime.LockOSThread()
		if tid := unix.Gettid(); tid != unix.Getpid() {
			f(tid)
			return // still locked
		}
		// The main thread, which the runtime never ends: it stays taken
		// while f runs on another one.
		done := make(chan struct{})
		onEndingThread(func(tid int) { defer close(done); f(tid) })
		<-done
		runtime.UnlockOSThread()
	}()
}

// TestDemoCtrlC: Ctrl-C sends SIGINT to the terminal's foreground process
// group, go run and the daemon alike; the daemon stops with exit status 0.
func TestDemoCtrlC(t *testing.T) {
	cmd := exec.Command(daemonBin, "demo", "-dir", t.TempDir(), "-address", "127.0.0.1:0")
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	awaitLine(t, out, "listening for LMTP")
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGINT to the process group: got %v, want exit status 0\n%s", err, stderr.String())
		}
	case <-time.After(waitTimeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("daemon still running %v after SIGINT", waitTimeout)
	}
	if !strings.Contains(stderr.String(), "signal=interrupt") {
		t.Errorf("log does not show the shutdown on SIGINT:\n%s", stderr.String())
	}
}

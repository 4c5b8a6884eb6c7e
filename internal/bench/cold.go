package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/testport"
)

var (
	coldData        = flag.String("cold-data", "", "directory for the cold suite's Wharf data (default: the bench's temporary directory)")
	dockerdRoot     = flag.String("dockerd-root", "/dev/shm", "parent of the cold suite's dockerd data root (a tmpfs: vfs copies every layer, ~1 GiB a pull, and this disk's write-back stalls would otherwise decide the figure; \"\": under the bench's temporary directory)")
	coldProfile     = flag.String("cold-profile", "", "save Wharf's CPU profile of the skopeo rounds (15 s) to this file (go tool pprof FILE)")
	coldRounds      = flag.Int("cold-rounds", 3, "rounds of the real-client cold pulls (each round: direct, wharf, distribution, on fresh images)")
	coldDocker      = flag.Bool("cold-docker", true, "run the cold suite's real-dockerd rounds (false: the skopeo rounds only)")
	coldSkopeo      = flag.Bool("cold-skopeo", true, "run the cold suite's skopeo, edge and missing-name rounds (false: the dockerd rounds only)")
	dropCaches      = flag.Bool("drop-caches", true, "empty the page cache (sync; /proc/sys/vm/drop_caches, root only) before each cold skopeo copy: on a VM that backs memory on first touch, page cache grown into untouched memory makes every write cost several times more")
	coldEdge        = flag.Bool("cold-edge", true, "run the edge-from-core rounds after the unshaped skopeo rounds")
	coldAB          = flag.String("cold-ab", "", "also copy through a second Wharf (and a second edge) started with these extra environment variables (comma-separated K=V), named wharf-ab, in the same unshaped skopeo and edge rounds: an A/B comparison side by side")
	distributionBin = flag.String("distribution", "", "CNCF Distribution registry binary (default: built from internal/tools/registry2)")
)

// target is one row of the table printed at the end.
type target struct {
	figure, before, goal, measured string
	met                            bool
}

var targets []target

func addTarget(figure, before, goal, measured string, met bool) {
	targets = append(targets, target{figure, before, goal, measured, met})
}

func printTargets() {
	if len(targets) == 0 {
		return
	}
	fmt.Println("targets:")
	fmt.Printf("  %-72s %-22s %-28s %-34s %s\n", "figure", "before", "target", "measured", "met")
	for _, t := range targets {
		met := "yes"
		if !t.met {
			met = "NO"
		}
		fmt.Printf("  %-72s %-22s %-28s %-34s %s\n", t.figure, t.before, t.goal, t.measured, met)
	}
}

// runCold measures what users run: the real dockerd and skopeo pulling
// cold through Wharf, through CNCF Distribution's proxy (registry:2 with
// proxy.remoteurl) and directly from the fake hub, side by side, on fresh
// images each time; and what Wharf asks upstream.
func runCold(tmp, bin string) error {
	for _, tool := range []string{"dockerd", "docker", "skopeo"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("cold suite needs %s: %w", tool, err)
		}
	}
	dist := *distributionBin
	if dist == "" {
		dist = filepath.Join(tmp, "registry")
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", dist, "github.com/distribution/distribution/v3/cmd/registry")
		cmd.Dir = filepath.Join("internal", "tools", "registry2")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building distribution: %v\n%s", err, out)
		}
		fmt.Printf("cold: built CNCF Distribution v3.1.1 in %.0fs\n", time.Since(start).Seconds())
	}
	hub, err := fakehub.New()
	if err != nil {
		return err
	}
	defer hub.Close()
	args := []string{"serve", "--addr", "127.0.0.1:0", "--data", coldDataDir(tmp), "--log-level", "warn", "--upstream", "docker.io=" + hub.URL}
	debugAddr := ""
	if *coldProfile != "" {
		if debugAddr, err = testport.Free(); err != nil {
			return err
		}
		args = append(args, "--debug-addr", debugAddr)
	}
	w, err := startProc(bin, args...)
	if err != nil {
		return err
	}
	defer w.stop()
	d, err := startDistribution(dist, filepath.Join(tmp, "distribution"), hub.URL)
	if err != nil {
		return err
	}
	defer d.stop()
	seed := uint64(1000)
	if *coldDocker {
		if err := dockerdRounds(tmp, hub, w, d, &seed); err != nil {
			return err
		}
	}
	if !*coldSkopeo {
		return nil
	}

	// skopeo, unshaped: CPU-bound, what each server costs per byte.
	hub.SetLatency(0)
	hub.SetBandwidth(0)
	fmt.Printf("cold: skopeo copy to dir:, no shaping (CPU-bound), %d rounds:\n", *coldRounds)
	if debugAddr != "" { // Wharf's CPU profile over the skopeo rounds
		profiled := make(chan error, 1)
		go func() { profiled <- saveProfile("http://"+debugAddr+"/debug/pprof/profile?seconds=15", *coldProfile) }()
		defer func() {
			if err := <-profiled; err != nil {
				fmt.Println("cold: profile:", err)
			} else {
				fmt.Println("cold: Wharf's CPU profile of the skopeo rounds in", *coldProfile)
			}
		}()
	}
	copies := []copyServer{{name: "direct", host: hub.Host()}, {name: "wharf", host: w.addr, pid: w.cmd.Process.Pid},
		{name: "distribution", host: d.addr, pid: d.cmd.Process.Pid}}
	if *coldAB != "" {
		ab, err := startAB(bin, coldDataDir(tmp)+"-ab", hub.URL)
		if err != nil {
			return err
		}
		defer ab.stop()
		copies = append(copies, copyServer{name: "wharf-ab", host: ab.addr, pid: ab.cmd.Process.Pid})
	}
	sr, err := skopeoRounds(tmp, hub, copies, &seed, nil)
	if err != nil {
		return err
	}
	ratios := sr.print()
	sr.cpuTarget("CPU seconds per GiB of a cold copy, unshaped (skopeo; the server process, median)", "3.74 s (Distr. 4.15 s)")
	sort.Float64s(sr.perBlob)
	addTarget("upstream requests per cold blob, unshaped (skopeo via Wharf, worst round)", "2 (HEAD + GET)", "1",
		fmt.Sprintf("%.2f", sr.perBlob[len(sr.perBlob)-1]), sr.perBlob[len(sr.perBlob)-1] <= 1)
	wm, dm := median(ratios[0]), median(ratios[1])
	addTarget("skopeo cold copy, unshaped loopback, Wharf ÷ direct (median)", "1.29–1.40 (Distr. 1.09–1.22)", "≤ 1.1 and below Distribution",
		fmt.Sprintf("%.2f (Distribution %.2f)", wm, dm), wm <= 1.1 && wm < dm)

	// An edge Wharf (and an edge Distribution) pulling cold from a core
	// Wharf that holds the image already: the upstream is as fast as this
	// machine serves files, the edge's own cost per byte decides.
	if *coldEdge {
		if err := edgeFromCore(tmp, bin, dist, hub, w, &seed); err != nil {
			return err
		}
	}

	// A name the hub does not have, pulled ten times: what each server asks.
	c := &http.Client{}
	missing := func(host string) (int, error) {
		hub.ResetCounts()
		for i := 0; i < 10; i++ {
			req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/v2/bench/no-such-image/manifests/latest", nil)
			req.Header.Set("Accept", accept)
			resp, err := c.Do(req)
			if err != nil {
				return 0, err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				return 0, fmt.Errorf("%s: missing name answered %s", host, resp.Status)
			}
		}
		return hub.Count("requests"), nil
	}
	wn, err := missing(w.addr)
	if err != nil {
		return err
	}
	dn, err := missing(d.addr)
	if err != nil {
		return err
	}
	fmt.Printf("cold: 10 pulls of a name the hub does not have: upstream requests: wharf %d, distribution %d\n", wn, dn)
	addTarget("10 pulls of a missing name within a minute: upstream requests", "20", "≤ 2",
		fmt.Sprintf("%d (Distribution %d)", wn, dn), wn <= 2)
	return nil
}

// dockerdRounds: the real dockerd pulling cold through each server from
// a hub shaped like Docker Hub from far away.
func dockerdRounds(tmp string, hub *fakehub.Hub, w, d *proc, seed *uint64) error {
	dk, err := startDockerd(tmp, []string{hub.Host(), w.addr, d.addr})
	if err != nil {
		return err
	}
	defer dk.stop()

	servers := []struct{ name, host string }{{"direct", hub.Host()}, {"wharf", w.addr}, {"distribution", d.addr}}
	// Real dockerd, shaped like Docker Hub from far away.
	hub.SetLatency(50 * time.Millisecond)
	hub.SetBandwidth(20 << 20)
	fmt.Printf("cold: real dockerd (3 layers at a time) pulling a %d x %d MiB image; hub 50 ms latency, 20 MiB/s per connection; %d rounds after a warm-up round:\n",
		*mirrorLayers, *mirrorLayerMB, *coldRounds)
	dockerTimes := make([][]float64, len(servers))
	var perBlob, headsPerBlob, warmTimes []float64
	// Round -1 is not counted: the first pulls after dockerd's start (and
	// after the other suites filled the page cache) are slower for every
	// server alike.
	for r := -1; r < *coldRounds; r++ {
		for i, s := range servers {
			*seed++
			repo := fmt.Sprintf("bench/docker%d", *seed)
			img := hub.Push(repo, "1", coldSpec(*seed))
			hub.ResetCounts()
			ref := s.host + "/" + repo + ":1"
			// Each pull starts with nothing left to write back from the
			// one before (dockerd's vfs copies every layer, ~1 GiB a pull).
			syscall.Sync()
			took, err := timed(func() error { return dk.run("pull", "-q", ref) })
			if err != nil {
				return fmt.Errorf("docker pull %s (%s): %w", ref, s.name, err)
			}
			if s.name == "wharf" && r >= 0 {
				blobs := len(img.Layers["linux/"+runtime.GOARCH]) + 1
				perBlob = append(perBlob, float64(hub.Count("GET blob")+hub.Count("HEAD blob"))/float64(blobs))
				headsPerBlob = append(headsPerBlob, float64(hub.Count("HEAD blob"))/float64(blobs))
			}
			if r >= 0 {
				dockerTimes[i] = append(dockerTimes[i], took.Seconds())
			}
			if err := dk.run("rmi", "-f", ref); err != nil {
				return err
			}
			if s.name == "wharf" { // again, all cached: dockerd's own floor (unpacking on vfs)
				syscall.Sync()
				took, err := timed(func() error { return dk.run("pull", "-q", ref) })
				if err != nil {
					return err
				}
				if r >= 0 {
					warmTimes = append(warmTimes, took.Seconds())
				}
				if err := dk.run("rmi", "-f", ref); err != nil {
					return err
				}
			}
			hub.Forget(repo) // the hub holds every image in memory
		}
	}
	ratios := printRatios(servers[0].name, dockerTimes, []string{"wharf", "distribution"})
	fmt.Printf("  %-14s", "wharf warm")
	for _, v := range warmTimes {
		fmt.Printf(" %7.2fs", v)
	}
	fmt.Println("  (everything cached: what dockerd itself needs)")
	worst := ratios[0][len(ratios[0])-1]
	addTarget("real dockerd cold pull, 50 ms + 20 MiB/s/conn, Wharf ÷ direct (worst round)", "0.77–0.99", "≤ 0.7 in every run",
		fmt.Sprintf("%.2f (Distribution %.2f)", worst, median(ratios[1])), worst <= 0.7)
	sort.Float64s(perBlob)
	sort.Float64s(headsPerBlob)
	// On this slow link each 20 MiB layer is fetched in 2 MiB ranged
	// segments (--upstream-segments); a fast one costs one GET per blob
	// (upstream.TestFastBlobNotSplit), as the skopeo pulls below count.
	addTarget("upstream HEADs per cold blob (dockerd pull via Wharf; GETs: ranged segments)", "1 (HEAD + GET)", "0",
		fmt.Sprintf("%.2f (GETs %.2f)", headsPerBlob[len(headsPerBlob)-1], perBlob[len(perBlob)-1]), headsPerBlob[len(headsPerBlob)-1] == 0)
	return nil
}

func coldSpec(seed uint64) fakehub.ImageSpec {
	return fakehub.ImageSpec{Platforms: []string{"linux/" + runtime.GOARCH}, Layers: *mirrorLayers, LayerSize: *mirrorLayerMB << 20, Seed: seed}
}

// printRatios prints each server's times and, per round, its time divided
// by the reference's (the first series) of the same round; it returns the
// sorted ratios of the named servers.
func printRatios(ref string, times [][]float64, names []string) [][]float64 {
	all := append([]string{ref}, names...)
	for i, n := range all {
		fmt.Printf("  %-14s", n)
		for _, v := range times[i] {
			fmt.Printf(" %7.2fs", v)
		}
		fmt.Println()
	}
	var out [][]float64
	for k, n := range names {
		var rs []float64
		for r := range times[0] {
			rs = append(rs, times[k+1][r]/times[0][r])
		}
		fmt.Printf("  %-14s ÷ %s per round:", n, ref)
		for _, v := range rs {
			fmt.Printf(" %.2f", v)
		}
		sort.Float64s(rs)
		fmt.Printf("  (median %.2f)\n", median(rs))
		out = append(out, rs)
	}
	// Paired rounds: each server against the first named one, round by
	// round, which the machine's drift between rounds does not decide.
	for k := 1; k < len(names); k++ {
		faster := fasterRounds(times[1], times[k+1])
		fmt.Printf("  %-14s faster than %s in %d of %d paired rounds\n", names[0], names[k], faster, len(times[1]))
	}
	return out
}

// fasterRounds counts the rounds in which a took less time than b.
func fasterRounds(a, b []float64) int {
	n := 0
	for r := range min(len(a), len(b)) {
		if a[r] < b[r] {
			n++
		}
	}
	return n
}

func median(sorted []float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	s := append([]float64(nil), sorted...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// startDistribution runs CNCF Distribution as a pull-through cache of
// upstream, the way registry:2 users configure proxy.remoteurl.
func startDistribution(bin, dir, upstream string) (*proc, error) {
	addr, err := testport.Free()
	if err != nil {
		return nil, err
	}
	os.MkdirAll(dir, 0o755)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
proxy:
  remoteurl: %s
`, filepath.Join(dir, "data"), addr, upstream)
	cf := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cf, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", cf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, addr: addr}
	for i := 0; i < 200; i++ {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return p, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.stop()
	return nil, errors.New("distribution did not start")
}

// dockerd is a daemon of the benchmark's own, in its own process group.
type dockerd struct {
	cmd  *exec.Cmd
	root string
	data string // data root outside root (-dockerd-root), removed at stop
	host string
}

func startDockerd(tmp string, insecure []string) (*dockerd, error) {
	root, err := os.MkdirTemp("/tmp", "wb") // unix socket paths are short
	if err != nil {
		return nil, err
	}
	cfg, _ := json.Marshal(map[string]any{"insecure-registries": insecure, "max-concurrent-downloads": 3})
	if err := os.WriteFile(filepath.Join(root, "daemon.json"), cfg, 0o644); err != nil {
		return nil, err
	}
	d := &dockerd{root: root, host: "unix://" + filepath.Join(root, "docker.sock")}
	dataRoot := filepath.Join(root, "data")
	if fi, serr := os.Stat(*dockerdRoot); *dockerdRoot != "" && serr == nil && fi.IsDir() {
		if dataRoot, err = os.MkdirTemp(*dockerdRoot, "wharf-bench-dockerd"); err != nil {
			return nil, err
		}
		d.data = dataRoot
	}
	d.cmd = exec.Command("dockerd", "--data-root", dataRoot, "--exec-root", filepath.Join(root, "exec"),
		"--pidfile", filepath.Join(root, "docker.pid"), "-H", d.host, "--config-file", filepath.Join(root, "daemon.json"),
		"--storage-driver", "vfs", "--iptables=false", "--bridge=none", "--ip-masq=false")
	logf, _ := os.Create(filepath.Join(tmp, "dockerd.log"))
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	for i := 0; i < 300; i++ {
		if d.run("version") == nil {
			return d, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.stop()
	return nil, errors.New("dockerd did not come up in 60s (see dockerd.log)")
}

func (d *dockerd) run(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+d.host, "DOCKER_CONFIG="+filepath.Join(d.root, "client"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (d *dockerd) stop() {
	syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	os.RemoveAll(d.root)
	if d.data != "" {
		os.RemoveAll(d.data)
	}
}

// coldDataDir is the cold suite's Wharf data directory: under tmp, or
// under -cold-data (to compare disks, e.g. a tmpfs).
// startAB starts the -cold-ab Wharf: bin with the extra environment, its
// own data directory, mirroring docker.io from upstream.
func startAB(bin, data, upstream string) (*proc, error) {
	return startProcEnv(strings.Split(*coldAB, ","), bin, "serve", "--addr", "127.0.0.1:0", "--data", data,
		"--log-level", "warn", "--upstream", "docker.io="+upstream)
}

func coldDataDir(tmp string) string {
	if *coldData != "" {
		return filepath.Join(*coldData, "cold-wharf")
	}
	return filepath.Join(tmp, "cold-wharf")
}

func saveProfile(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuSeconds is the CPU time (user + system) process pid used so far, from
// /proc/PID/stat (in clock ticks of 1/100 s, Linux's USER_HZ).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64) // field 14
	stime, err2 := strconv.ParseFloat(f[12], 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return (utime + stime) / 100, nil
}

package main

import (
	"fmt"
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
)

// copyServer is one registry the skopeo rounds copy from; pid is its
// process (0: not measured, e.g. the hub inside this process).
type copyServer struct {
	name, host string
	pid        int
}

// copyRounds is what skopeoRounds measured: per server and round the cold
// copy's wall time; per measured server its CPU seconds per GiB of the
// cold copy (ingested and served) and of a warm copy right after (served
// only); upstream requests per blob of the "wharf" server's cold copies.
type copyRounds struct {
	servers []copyServer
	times   [][]float64
	cold    map[string][]float64
	warm    map[string][]float64
	// the warm copy's wall time
	warmTimes map[string][]float64
	// the whole machine's busy CPU seconds per GiB for the cold copy and a
	// sync after it (every process and kernel thread: write-back included,
	// wherever it runs)
	machine  map[string][]float64
	perBlob  []float64
	imageGiB float64
}

// skopeoRounds copies a fresh image from every server in turn, cold, then
// warm from the same server: -cold-rounds rounds after an uncounted one
// (page cache, binaries, connections). prepare, when set, runs before
// each cold copy of a freshly pushed repository.
func skopeoRounds(tmp string, hub *fakehub.Hub, servers []copyServer, seed *uint64, prepare func(server copyServer, repo string) error) (*copyRounds, error) {
	cr := &copyRounds{servers: servers, times: make([][]float64, len(servers)),
		cold: map[string][]float64{}, warm: map[string][]float64{}, warmTimes: map[string][]float64{}, machine: map[string][]float64{},
		imageGiB: float64(*mirrorLayers*(*mirrorLayerMB)) / 1024}
	dest := filepath.Join(tmp, "skopeo-dest")
	copyFrom := func(host, repo string) (time.Duration, error) {
		return timed(func() error { return skopeoCopy(host, repo, dest) })
	}
	// measured runs f and returns the server's CPU seconds per GiB of the image.
	measured := func(pid int, f func() error) (float64, error) {
		before, err := cpuSeconds(pid)
		if err != nil {
			return 0, err
		}
		if err := f(); err != nil {
			return 0, err
		}
		after, err := cpuSeconds(pid)
		return (after - before) / cr.imageGiB, err
	}
	for r := -1; r < *coldRounds; r++ {
		for i, s := range servers {
			*seed++
			repo := fmt.Sprintf("bench/skopeo%d", *seed)
			img := hub.Push(repo, "1", coldSpec(*seed))
			if prepare != nil {
				if err := prepare(s, repo); err != nil {
					return nil, err
				}
			}
			hub.ResetCounts()
			var took time.Duration
			var busy float64
			syscall.Sync() // nothing left to write back from before
			dropPageCache()
			cold := func() error {
				before, err := machineBusy()
				if err != nil {
					return err
				}
				if took, err = copyFrom(s.host, repo); err != nil {
					return err
				}
				syscall.Sync() // skopeo's copy is removed by now: only what the server keeps is written back
				after, err := machineBusy()
				busy = after - before
				return err
			}
			if s.pid == 0 {
				if err := cold(); err != nil {
					return nil, err
				}
			} else {
				c, err := measured(s.pid, cold)
				if err != nil {
					return nil, err
				}
				var warmTook time.Duration
				w, err := measured(s.pid, func() (err error) { warmTook, err = copyFrom(s.host, repo); return err })
				if err != nil {
					return nil, err
				}
				if r >= 0 {
					cr.cold[s.name] = append(cr.cold[s.name], c)
					cr.warm[s.name] = append(cr.warm[s.name], w)
					cr.warmTimes[s.name] = append(cr.warmTimes[s.name], warmTook.Seconds())
				}
			}
			if r >= 0 {
				cr.machine[s.name] = append(cr.machine[s.name], busy/cr.imageGiB)
			}
			hub.Forget(repo) // the hub holds every image in memory
			if r < 0 {
				continue
			}
			cr.times[i] = append(cr.times[i], took.Seconds())
			if s.name == "wharf" {
				blobs := len(img.Layers["linux/"+runtime.GOARCH]) + 1
				cr.perBlob = append(cr.perBlob, float64(hub.Count("GET blob")+hub.Count("HEAD blob"))/float64(blobs))
			}
		}
	}
	return cr, nil
}

// print prints the wall times, each server's ratio to the first one's and
// the CPU figures; it returns the sorted ratios of the servers after the
// first.
func (cr *copyRounds) print() [][]float64 {
	var names []string
	for _, s := range cr.servers[1:] {
		names = append(names, s.name)
	}
	ratios := printRatios(cr.servers[0].name, cr.times, names)
	for _, s := range cr.servers {
		if s.pid == 0 {
			continue
		}
		fmt.Printf("  %-14s CPU s/GiB, cold (ingested + served):", s.name)
		for _, v := range cr.cold[s.name] {
			fmt.Printf(" %5.2f", v)
		}
		fmt.Printf("; warm (served):")
		for _, v := range cr.warm[s.name] {
			fmt.Printf(" %5.2f", v)
		}
		fmt.Println()
	}
	for _, s := range cr.servers {
		fmt.Printf("  %-14s machine CPU s/GiB, cold copy + sync (all processes, write-back included):", s.name)
		for _, v := range cr.machine[s.name] {
			fmt.Printf(" %5.2f", v)
		}
		fmt.Printf("  (median %.2f)\n", median(cr.machine[s.name]))
	}
	for _, s := range cr.servers {
		if len(cr.warmTimes[s.name]) == 0 {
			continue
		}
		var rs []float64
		fmt.Printf("  %-14s warm copy right after ÷ %s:", s.name, cr.servers[0].name)
		for r, v := range cr.warmTimes[s.name] {
			rs = append(rs, v/cr.times[0][r])
			fmt.Printf(" %.2f", v/cr.times[0][r])
		}
		fmt.Printf("  (median %.2f: the floor of a cold copy)\n", median(rs))
	}
	return ratios
}

// cpuTarget adds the row comparing the median CPU per GiB of the cold
// copies of the first two measured servers (Wharf, then Distribution).
func (cr *copyRounds) cpuTarget(figure, before string) {
	var m []copyServer
	for _, s := range cr.servers {
		if s.pid != 0 {
			m = append(m, s)
		}
	}
	if len(m) < 2 || len(cr.cold[m[0].name]) == 0 || len(cr.cold[m[1].name]) == 0 {
		return
	}
	a, b := sortedCopy(cr.cold[m[0].name]), sortedCopy(cr.cold[m[1].name])
	wa, wb := sortedCopy(cr.warm[m[0].name]), sortedCopy(cr.warm[m[1].name])
	addTarget(figure, before, "≤ Distribution's",
		fmt.Sprintf("%.2f s (Distr. %.2f; warm %.2f/%.2f)", median(a), median(b), median(wa), median(wb)), median(a) <= median(b))
	// The same on the whole machine, over the first (unmeasured) server's
	// copy: write-back counts wherever it runs (Wharf fsyncs each blob in
	// its own process; Distribution leaves it to the kernel's threads).
	ref := median(cr.machine[cr.servers[0].name])
	xa, xb := median(cr.machine[m[0].name])-ref, median(cr.machine[m[1].name])-ref
	addTarget(figure+", whole machine with write-back, over "+cr.servers[0].name, "not measured", "≤ Distribution's",
		fmt.Sprintf("+%.2f s (Distr. +%.2f)", xa, xb), xa <= xb)
}

func sortedCopy(v []float64) []float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s
}

// edgeFromCore measures an edge Wharf, and an edge Distribution, pulling
// cold from a core Wharf (core) that already holds each image, against
// skopeo copying from the core directly.
func edgeFromCore(tmp, bin, dist string, hub *fakehub.Hub, core *proc, seed *uint64) error {
	edge, err := startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(coldDataDir(tmp)+"-edge"),
		"--log-level", "warn", "--upstream", "docker.io=http://"+core.addr)
	if err != nil {
		return err
	}
	defer edge.stop()
	d, err := startDistribution(dist, filepath.Join(tmp, "distribution-edge"), "http://"+core.addr)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Printf("cold: edge from core: skopeo copy through an edge that pulls from a core Wharf holding the image, %d rounds:\n", *coldRounds)
	warmCore := func(_ copyServer, repo string) error {
		return skopeoCopy(core.addr, repo, filepath.Join(tmp, "skopeo-warm-core"))
	}
	servers := []copyServer{{name: "core", host: core.addr},
		{name: "wharf", host: edge.addr, pid: edge.cmd.Process.Pid},
		{name: "distribution", host: d.addr, pid: d.cmd.Process.Pid}}
	if *coldAB != "" {
		ab, err := startAB(bin, coldDataDir(tmp)+"-edge-ab", "http://"+core.addr)
		if err != nil {
			return err
		}
		defer ab.stop()
		servers = append(servers, copyServer{name: "wharf-ab", host: ab.addr, pid: ab.cmd.Process.Pid})
	}
	cr, err := skopeoRounds(tmp, hub, servers, seed, warmCore)
	if err != nil {
		return err
	}
	ratios := cr.print()
	wm, dm := median(ratios[0]), median(ratios[1])
	addTarget("skopeo cold copy, edge Wharf from a core Wharf, ÷ from the core (median)", "not measured", "≤ 1.1 and below Distribution",
		fmt.Sprintf("%.2f (Distribution %.2f)", wm, dm), wm <= 1.1 && wm < dm)
	cr.cpuTarget("CPU seconds per GiB of a cold copy, edge from core (the edge process, median)", "not measured")
	return nil
}

// dropPageCache empties the page cache before a cold copy (-drop-caches;
// root only: once refused, it is not tried again). On this virtual machine
// the host backs guest memory on first touch: writing files into page
// cache the guest has not used before costs about ten times the CPU
// (measured with dd, 1 GiB at a time: 0.23 s of system time per GiB for
// the first 5 GiB of page cache, 2.5–3.0 s per GiB beyond; 0.28 s again
// once those files were removed). Without it, every server's copies late
// in a run pay that and the early ones do not.
func dropPageCache() {
	if !*dropCaches {
		return
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0); err != nil {
		*dropCaches = false
		fmt.Println("cold: cannot drop the page cache before each copy; copies late in the run may cost more per byte written:", err)
	}
}

// machineBusy is the CPU time (seconds) all cores spent busy so far: the
// first line of /proc/stat less idle and iowait (in USER_HZ, 1/100 s).
func machineBusy() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is in user already
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q", line)
		}
		busy += n
	}
	return busy / 100, nil
}

// skopeoCopy copies repo:1 from host into the directory dest, then
// removes dest.
func skopeoCopy(host, repo, dest string) error {
	defer os.RemoveAll(dest)
	out, err := exec.Command("skopeo", "copy", "-q", "--src-tls-verify=false", "--retry-times", "0",
		"docker://"+host+"/"+repo+":1", "dir:"+dest).CombinedOutput()
	if err != nil {
		return fmt.Errorf("skopeo copy from %s: %v: %s", host, err, out)
	}
	return nil
}

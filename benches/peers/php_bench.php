<?php
// The libgearman peer of `gearframe bench --peer php`: the same scenarios
// driven through PHP's gearman extension (libgearman).
//
//   php php_bench.php client bg|fg|seq HOST PORT FUNCTION JOBS IN_FLIGHT PAYLOAD_BYTES
//   php php_bench.php worker HOST PORT FUNCTION
//
// A client prints one JSON object: start and end (seconds, wall clock),
// lat_us (one latency per job), cpu_s (its own user + system time), ok.
// Pipelined modes add IN_FLIGHT tasks, then runTasks(), round after round:
// a latency is measured from the start of its round. A wrong or missing
// result makes the client exit 1.
//
// A worker echoes every job and stops after the job whose payload is STOP.
// It then prints count, first (start of its first job), last (end of its
// last job) and cpu_s.
//
// Either then keeps its connection open until its stdin is closed, so that
// the server's per-connection threads are still there when the bench reads
// the server's CPU time.

function cpu_s() {
    $r = getrusage();
    return $r['ru_utime.tv_sec'] + $r['ru_utime.tv_usec'] / 1e6
        + $r['ru_stime.tv_sec'] + $r['ru_stime.tv_usec'] / 1e6;
}

function payload($i, $bytes) {
    return str_pad((string)$i, $bytes, '.');
}

function fail($msg) {
    fwrite(STDERR, "php_bench: $msg\n");
    exit(1);
}

$role = $argv[1] ?? '';
if ($role === 'worker') {
    [, , $host, $port, $func] = $argv;
    $w = new GearmanWorker();
    $w->addServer($host, (int)$port);
    $w->setTimeout(120000);
    $count = 0;
    $first = 0.0;
    $last = 0.0;
    $stop = false;
    $w->addFunction($func, function ($job) use (&$count, &$first, &$last, &$stop) {
        $t = microtime(true);
        $data = $job->workload();
        if ($data === 'STOP') {
            $stop = true;
            return $data;
        }
        if ($count === 0) {
            $first = $t;
        }
        $count++;
        $last = microtime(true);
        return $data;
    });
    while (!$stop) {
        if (!$w->work()) {
            fail('worker: ' . $w->error());
        }
    }
    echo json_encode(['count' => $count, 'first' => $first, 'last' => $last, 'cpu_s' => cpu_s()]), "\n";
    fflush(STDOUT);
    stream_get_contents(STDIN);
    exit(0);
}

if ($role !== 'client' || $argc < 9) {
    fail('usage: client bg|fg|seq HOST PORT FUNCTION JOBS IN_FLIGHT PAYLOAD_BYTES | worker HOST PORT FUNCTION');
}
[, , $mode, $host, $port, $func, $jobs, $inflight, $bytes] = $argv;
$jobs = (int)$jobs;
$inflight = max(1, (int)$inflight);
$bytes = (int)$bytes;
$c = new GearmanClient();
$c->addServer($host, (int)$port);
$c->setTimeout(60000);
$lat = [];
$ok = 0;
$start = microtime(true);

if ($mode === 'seq') {
    for ($i = 0; $i < $jobs; $i++) {
        $p = payload($i, $bytes);
        $t = microtime(true);
        $r = $c->doNormal($func, $p);
        $lat[] = (microtime(true) - $t) * 1e6;
        if ($c->returnCode() !== GEARMAN_SUCCESS || $r !== $p) {
            fail("seq job $i: code " . $c->returnCode() . ': ' . $c->error());
        }
        $ok++;
    }
} elseif ($mode === 'bg' || $mode === 'fg') {
    $roundStart = 0.0;
    if ($mode === 'bg') {
        $c->setCreatedCallback(function ($task) use (&$lat, &$ok, &$roundStart) {
            if ($task->jobHandle() === '') {
                return GEARMAN_WORK_FAIL;
            }
            $lat[] = (microtime(true) - $roundStart) * 1e6;
            $ok++;
            return GEARMAN_SUCCESS;
        });
    } else {
        $c->setCompleteCallback(function ($task, $expected) use (&$lat, &$ok, &$roundStart) {
            if ($task->data() !== $expected) {
                fail('wrong result for ' . $task->jobHandle());
            }
            $lat[] = (microtime(true) - $roundStart) * 1e6;
            $ok++;
            return GEARMAN_SUCCESS;
        });
    }
    for ($i = 0; $i < $jobs; $i += $inflight) {
        $n = min($inflight, $jobs - $i);
        for ($k = $i; $k < $i + $n; $k++) {
            $p = payload($k, $bytes);
            if ($mode === 'bg') {
                $c->addTaskBackground($func, $p, null, "u$k-" . getmypid());
            } else {
                $c->addTask($func, $p, $p, "u$k-" . getmypid());
            }
        }
        $roundStart = microtime(true);
        if (!$c->runTasks()) {
            fail('runTasks: ' . $c->error());
        }
    }
} else {
    fail("unknown mode $mode");
}
$end = microtime(true);
if ($ok !== $jobs) {
    fail("$ok of $jobs jobs succeeded");
}
echo json_encode(['start' => $start, 'end' => $end, 'lat_us' => $lat, 'cpu_s' => cpu_s(), 'ok' => $ok]), "\n";
fflush(STDOUT);
stream_get_contents(STDIN);

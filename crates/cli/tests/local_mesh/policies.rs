//! Traffic policies through real sidecars in the local mesh: fault
//! injection (abort and delay), retries turning a flaky upstream's 503s
//! into successes, and outlier detection ejecting a failing pod. One mesh
//! for all three; request counts are small.

use crate::support::{TestMesh, num};

const MANIFESTS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: tp, labels: {istio-injection: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tpclient, namespace: tp}
spec:
  selector: {matchLabels: {app: tpclient}}
  template:
    metadata: {labels: {app: tpclient}}
    spec:
      containers:
      - {name: c, image: weft/demo-http, args: [--listen, "0.0.0.0:8080"], readinessProbe: {httpGet: {path: /healthz, port: 8080}}}
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: tp}
spec:
  selector: {app: flaky}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaky, namespace: tp}
spec:
  selector: {matchLabels: {app: flaky}}
  template:
    metadata: {labels: {app: flaky}}
    spec:
      containers:
      - {name: c, image: weft/demo-http, args: [--listen, "0.0.0.0:8080", --fail-every, "2"], readinessProbe: {httpGet: {path: /healthz, port: 8080}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: tp}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 0}
---
apiVersion: v1
kind: Service
metadata: {name: flaky-retried, namespace: tp}
spec:
  selector: {app: flaky}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky-retried, namespace: tp}
spec:
  hosts: [flaky-retried]
  http:
  - route: [{destination: {host: flaky-retried}}]
    retries: {attempts: 3, retryOn: 5xx, perTryTimeout: 2s}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: tp}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: tp}
spec:
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - {name: c, image: weft/demo-http, args: [--listen, "0.0.0.0:8080"], readinessProbe: {httpGet: {path: /healthz, port: 8080}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: tp}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - match: [{headers: {x-fault: {exact: delay}}}]
    fault: {delay: {fixedDelay: 600ms, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
---
apiVersion: v1
kind: Service
metadata: {name: od, namespace: tp}
spec:
  selector: {app: od}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: od-good, namespace: tp}
spec:
  selector: {matchLabels: {app: od, health: good}}
  template:
    metadata: {labels: {app: od, health: good}}
    spec:
      containers:
      - {name: c, image: weft/demo-http, args: [--listen, "0.0.0.0:8080"], readinessProbe: {httpGet: {path: /healthz, port: 8080}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: od-bad, namespace: tp}
spec:
  selector: {matchLabels: {app: od, health: bad}}
  template:
    metadata: {labels: {app: od, health: bad}}
    spec:
      containers:
      - {name: c, image: weft/demo-http, args: [--listen, "0.0.0.0:8080", --fail-every, "1"], readinessProbe: {httpGet: {path: /healthz, port: 8080}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: od, namespace: tp}
spec:
  host: od
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
"#;

#[test]
fn faults_retries_and_outlier_detection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tp.yaml"), MANIFESTS).unwrap();
    let mesh = TestMesh::up("tp", dir.path());
    let client = "tp/tpclient";

    // Fault injection: abort answers 418 without reaching the app; delay
    // holds each request at least the configured 600 ms.
    let abort = mesh.load(
        client,
        &[
            "--url",
            "http://echo:8080/",
            "--requests",
            "10",
            "-H",
            "x-fault: abort",
        ],
    );
    assert_eq!(abort["statuses"]["418"], 10, "{abort:#}");
    assert_eq!(
        abort["versions"].as_object().map_or(0, |m| m.len()),
        0,
        "an aborted request reached the app: {abort:#}"
    );
    let delay = mesh.load(
        client,
        &[
            "--url",
            "http://echo:8080/",
            "--requests",
            "4",
            "-H",
            "x-fault: delay",
        ],
    );
    assert_eq!(num(&delay, "succeeded"), 4, "{delay:#}");
    let p50 = delay["latency_ms"]["p50"].as_f64().unwrap();
    assert!(
        p50 >= 600.0,
        "the injected 600 ms delay did not hold requests: p50 {p50} ms"
    );
    let plain = mesh.load(client, &["--url", "http://echo:8080/", "--requests", "10"]);
    assert_eq!(num(&plain, "succeeded"), 10, "{plain:#}");

    // Retries: the app fails every second request. With retries off
    // (`attempts: 0`; Istio's default policy would retry 503 once) half the
    // calls fail; with `retries: {attempts: 3, retryOn: 5xx}` all succeed.
    let bare = mesh.load(
        client,
        &[
            "--url",
            "http://flaky:8080/",
            "--requests",
            "20",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(bare["statuses"]["503"], 10, "without retries: {bare:#}");
    let retried = mesh.load(
        client,
        &[
            "--url",
            "http://flaky-retried:8080/",
            "--requests",
            "20",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(num(&retried, "succeeded"), 20, "with retries: {retried:#}");

    // Outlier detection: od-bad answers 503 to everything. After two
    // consecutive 5xx it is ejected; the rest goes to od-good.
    let od = mesh.load(
        client,
        &[
            "--url",
            "http://od:8080/",
            "--requests",
            "40",
            "--concurrency",
            "1",
        ],
    );
    let failed = num(&od, "requests") - num(&od, "succeeded");
    assert!(
        failed <= 4,
        "{failed} failures: od-bad was not ejected: {od:#}"
    );
    let late = mesh.load(
        client,
        &[
            "--url",
            "http://od:8080/",
            "--requests",
            "20",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(
        num(&late, "succeeded"),
        20,
        "od-bad served after its ejection: {late:#}"
    );

    mesh.shutdown_and_check();
}

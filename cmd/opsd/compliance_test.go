package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestComplianceThroughDaemon grades two sources for real: one with a
// local copy and an object-locked copy on Versity Gateway (whose lock the
// canary proves enforced) reaches 3-2-1-1-0 once both copies are read
// back; one with a single local copy is below its 3-2-1 policy and says
// which rule is missing.
func TestComplianceThroughDaemon(t *testing.T) {
	v, bucket := versityForDaemon(t, true)
	dir := t.TempDir()
	cfgPath := faultConfig(t, dir, fmt.Sprintf(`  a:      {type: local, path: ./target-a}
  vault:  {type: s3, bucket: %s, endpoint: %q, path_style: true, region: us-east-1, object_lock: {mode: GOVERNANCE, days: 1}}
  gone:   {type: s3, bucket: no-such-bucket, endpoint: %q, path_style: true, region: us-east-1}
`, bucket, v.Endpoint, v.Endpoint), `  orders:
    type: files
    paths: [./src]
    schedule: "@daily"
    targets: [a, vault]
    policy: 3-2-1-1-0
    encryption: {age_identity_file: ./keys/age.key, generate: true}
  thin:
    type: files
    paths: [./src]
    schedule: "@daily"
    targets: [a, gone]
    policy: 3-2-1
    objectives: {rpo: 1h}
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`)
	d := startDaemon(t, cfgPath, true)
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	if code, out, errOut := cli(t, env, "backup", "run", "orders", "--wait"); code != 0 {
		t.Fatalf("backup run orders = %d %s %s", code, out, errOut)
	}
	// The copy to the missing bucket fails: a partial backup (exit 1).
	if code, out, errOut := cli(t, env, "backup", "run", "thin", "--wait"); code != 1 || !strings.Contains(out+errOut, "partial") {
		t.Fatalf("backup run thin = %d %s %s, want partial", code, out, errOut)
	}
	type source struct {
		Name        string  `json:"name"`
		Level       *string `json:"level"`
		MeetsPolicy bool    `json:"meets_policy"`
		Missing     string  `json:"missing"`
		LastChecked *string `json:"last_checksum_verification"`
	}
	var got map[string]source
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var list struct {
			Items []source `json:"items"`
		}
		if code := d.api(t, "GET", "/api/v1/sources", testToken, &list); code != 200 {
			t.Fatalf("GET sources = %d", code)
		}
		got = map[string]source{}
		for _, s := range list.Items {
			got[s.Name] = s
		}
		if o := got["orders"]; o.Level != nil && *o.Level == "3-2-1-1-0" {
			break
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(got)
			t.Fatalf("orders did not reach 3-2-1-1-0 in 30s: %s", b)
		}
	}
	if o := got["orders"]; !o.MeetsPolicy || o.Missing != "" || o.LastChecked == nil {
		t.Errorf("orders = %+v, want meeting its policy with nothing missing and a read-back time", o)
	}
	if th := got["thin"]; th.MeetsPolicy || th.Level == nil || *th.Level == "3-2-1" || !strings.Contains(th.Missing, "cop") {
		t.Errorf("thin = %+v, want below 3-2-1, missing a second copy", th)
	}
	code, out, errOut := cli(t, env, "status")
	if code != 0 || !strings.Contains(out, "3-2-1-1-0") || !strings.Contains(out, "thin: below its policy 3-2-1") {
		t.Errorf("opsd status = %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("opsd status:\n%s", out)
}

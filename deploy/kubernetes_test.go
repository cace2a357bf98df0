package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The types below model the subset of the Kubernetes API the manifests use.
// Documents are decoded with KnownFields, so a misspelt field (which the API
// server would drop or reject) fails the test; a field the manifests start
// using must be added here.

type objectMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type typeMeta struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
}

type configMap struct {
	typeMeta `yaml:",inline"`
	Data     map[string]string `yaml:"data"`
}

type secret struct {
	typeMeta   `yaml:",inline"`
	Type       string            `yaml:"type"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

func (s secret) has(key string) bool {
	_, a := s.Data[key]
	_, b := s.StringData[key]
	return a || b
}

type serviceAccount struct {
	typeMeta                     `yaml:",inline"`
	AutomountServiceAccountToken *bool `yaml:"automountServiceAccountToken"`
}

type pvc struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		AccessModes      []string `yaml:"accessModes"`
		StorageClassName *string  `yaml:"storageClassName"`
		Resources        struct {
			Requests map[string]string `yaml:"requests"`
		} `yaml:"resources"`
	} `yaml:"spec"`
}

type service struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		Type     string            `yaml:"type"`
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string    `yaml:"name"`
			Port       int       `yaml:"port"`
			TargetPort yaml.Node `yaml:"targetPort"`
			Protocol   string    `yaml:"protocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type seccompProfile struct {
	Type string `yaml:"type"`
}

type podSecurityContext struct {
	RunAsNonRoot        *bool           `yaml:"runAsNonRoot"`
	RunAsUser           *int64          `yaml:"runAsUser"`
	RunAsGroup          *int64          `yaml:"runAsGroup"`
	FSGroup             *int64          `yaml:"fsGroup"`
	FSGroupChangePolicy string          `yaml:"fsGroupChangePolicy"`
	SeccompProfile      *seccompProfile `yaml:"seccompProfile"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	RunAsGroup               *int64 `yaml:"runAsGroup"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             *struct {
		Add  []string `yaml:"add"`
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile *seccompProfile `yaml:"seccompProfile"`
}

type probe struct {
	HTTPGet *struct {
		Path   string    `yaml:"path"`
		Port   yaml.Node `yaml:"port"`
		Scheme string    `yaml:"scheme"`
	} `yaml:"httpGet"`
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
	InitialDelaySeconds int `yaml:"initialDelaySeconds"`
	PeriodSeconds       int `yaml:"periodSeconds"`
	TimeoutSeconds      int `yaml:"timeoutSeconds"`
	FailureThreshold    int `yaml:"failureThreshold"`
	SuccessThreshold    int `yaml:"successThreshold"`
}

type keyRef struct {
	Name     string `yaml:"name"`
	Key      string `yaml:"key"`
	Optional bool   `yaml:"optional"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	Command         []string `yaml:"command"`
	Args            []string `yaml:"args"`
	RestartPolicy   string   `yaml:"restartPolicy"`
	Ports           []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef    *keyRef `yaml:"secretKeyRef"`
			ConfigMapKeyRef *keyRef `yaml:"configMapKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
	StartupProbe    *probe           `yaml:"startupProbe"`
	LivenessProbe   *probe           `yaml:"livenessProbe"`
	ReadinessProbe  *probe           `yaml:"readinessProbe"`
	SecurityContext *securityContext `yaml:"securityContext"`
	Resources       struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
}

type keyToPath struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
	Mode *int   `yaml:"mode"`
}

type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name        string      `yaml:"name"`
		DefaultMode *int        `yaml:"defaultMode"`
		Items       []keyToPath `yaml:"items"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName  string      `yaml:"secretName"`
		DefaultMode *int        `yaml:"defaultMode"`
		Items       []keyToPath `yaml:"items"`
		Optional    bool        `yaml:"optional"`
	} `yaml:"secret"`
	PersistentVolumeClaim *struct {
		ClaimName string `yaml:"claimName"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"persistentVolumeClaim"`
	EmptyDir *struct {
		Medium    string `yaml:"medium"`
		SizeLimit string `yaml:"sizeLimit"`
	} `yaml:"emptyDir"`
}

type podSpec struct {
	ServiceAccountName            string              `yaml:"serviceAccountName"`
	AutomountServiceAccountToken  *bool               `yaml:"automountServiceAccountToken"`
	TerminationGracePeriodSeconds *int                `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               *podSecurityContext `yaml:"securityContext"`
	InitContainers                []container         `yaml:"initContainers"`
	Containers                    []container         `yaml:"containers"`
	Volumes                       []volume            `yaml:"volumes"`
}

type deployment struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		Replicas *int `yaml:"replicas"`
		Strategy struct {
			Type string `yaml:"type"`
		} `yaml:"strategy"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     podSpec    `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// manifests is every object of one file, by kind.
type manifests struct {
	configMaps      map[string]configMap
	secrets         map[string]secret
	serviceAccounts map[string]serviceAccount
	pvcs            map[string]pvc
	services        []service
	deployments     []deployment
}

// decodeStrict decodes one YAML document into v, rejecting unknown fields.
func decodeStrict(doc []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// lineRef matches the line numbers in yaml.v3 errors.
var lineRef = regexp.MustCompile(`line (\d+)`)

// splitDocuments splits a multi-document YAML file at "---" lines and returns
// each document with the file line it starts on.
func splitDocuments(text string) (docs []string, starts []int) {
	var cur []string
	start := 1
	for i, line := range strings.Split(text, "\n") {
		if strings.TrimRight(line, " \t") == "---" {
			docs, starts = append(docs, strings.Join(cur, "\n")), append(starts, start)
			cur, start = nil, i+2
			continue
		}
		// Keep line numbers: blank lines stand in for the separator.
		cur = append(cur, line)
	}
	return append(docs, strings.Join(cur, "\n")), append(starts, start)
}

// parseManifests decodes a multi-document file.
func parseManifests(text string) (manifests, error) {
	m := manifests{
		configMaps: map[string]configMap{}, secrets: map[string]secret{},
		serviceAccounts: map[string]serviceAccount{}, pvcs: map[string]pvc{},
	}
	docs, starts := splitDocuments(text)
	for i, text := range docs {
		// fileLines rewrites "line N" in a decoding error to the file's line.
		fileLines := func(err error) error {
			return errors.New(lineRef.ReplaceAllStringFunc(err.Error(), func(s string) string {
				n, _ := strconv.Atoi(strings.TrimPrefix(s, "line "))
				return fmt.Sprintf("line %d", n+starts[i]-1)
			}))
		}
		var node yaml.Node
		if err := yaml.Unmarshal([]byte(text), &node); err != nil {
			return m, fileLines(err)
		}
		if len(node.Content) == 0 {
			continue // only comments
		}
		doc := []byte(text)
		var tm struct {
			Kind     string     `yaml:"kind"`
			Metadata objectMeta `yaml:"metadata"`
		}
		if err := node.Decode(&tm); err != nil {
			return m, fileLines(err)
		}
		if tm.Metadata.Name == "" {
			return m, fmt.Errorf("line %d: %s without metadata.name", starts[i], tm.Kind)
		}
		where := fmt.Sprintf("%s %s", tm.Kind, tm.Metadata.Name)
		var err error
		switch tm.Kind {
		case "ConfigMap":
			var o configMap
			err = decodeStrict(doc, &o)
			m.configMaps[o.Metadata.Name] = o
		case "Secret":
			var o secret
			err = decodeStrict(doc, &o)
			m.secrets[o.Metadata.Name] = o
		case "ServiceAccount":
			var o serviceAccount
			err = decodeStrict(doc, &o)
			m.serviceAccounts[o.Metadata.Name] = o
		case "PersistentVolumeClaim":
			var o pvc
			err = decodeStrict(doc, &o)
			m.pvcs[o.Metadata.Name] = o
		case "Service":
			var o service
			err = decodeStrict(doc, &o)
			m.services = append(m.services, o)
		case "Deployment":
			var o deployment
			err = decodeStrict(doc, &o)
			m.deployments = append(m.deployments, o)
		default:
			err = errors.New("kind not modelled by this test; add a type for it")
		}
		if err != nil {
			return m, fmt.Errorf("%s: %w", where, fileLines(err))
		}
	}
	return m, nil
}

// opsdConfig is the part of opsd.yaml (SPEC §2) the manifests must agree with.
type opsdConfig struct {
	DataDir string `yaml:"data_dir"`
	State   struct {
		Postgres string `yaml:"postgres"`
	} `yaml:"state"`
	Server struct {
		Listen        string `yaml:"listen"`
		MetricsPublic bool   `yaml:"metrics_public"`
		Tokens        []struct {
			Name       string `yaml:"name"`
			Role       string `yaml:"role"`
			SHA256     string `yaml:"sha256"`
			SHA256File string `yaml:"sha256_file"`
		} `yaml:"tokens"`
	} `yaml:"server"`
	Audit struct {
		SigningKeyFile string `yaml:"signing_key_file"`
	} `yaml:"audit"`
	Targets map[string]struct {
		Type string `yaml:"type"`
		Path string `yaml:"path"`
	} `yaml:"targets"`
}

var (
	envRef  = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	fileRef = regexp.MustCompile(`\$\{file:([^}]+)\}`)
)

func TestKubernetesManifests(t *testing.T) {
	tests := []struct {
		file string
		// wantOthers: the pod also runs a non-opsd container (the app).
		wantOthers bool
		// wantService, wantServiceAccount: standalone exposes opsd and gives
		// it its own account.
		wantService, wantServiceAccount bool
	}{
		{file: "kubernetes/sidecar.yaml", wantOthers: true},
		{file: "kubernetes/standalone.yaml", wantService: true, wantServiceAccount: true},
	}
	for _, tt := range tests {
		t.Run(path.Base(tt.file), func(t *testing.T) {
			m, err := parseManifests(readFile(t, tt.file))
			if err != nil {
				t.Fatalf("%s: %v", tt.file, err)
			}
			if len(m.deployments) != 1 {
				t.Fatalf("%d Deployments, want 1", len(m.deployments))
			}
			d := m.deployments[0]
			checkDeployment(t, m, d, tt.wantOthers)
			if tt.wantService {
				checkService(t, m, d)
			}
			if tt.wantServiceAccount {
				sa, ok := m.serviceAccounts[d.Spec.Template.Spec.ServiceAccountName]
				if !ok {
					t.Errorf("pod uses ServiceAccount %q, not defined in the file", d.Spec.Template.Spec.ServiceAccountName)
				} else if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
					t.Errorf("ServiceAccount %s: automountServiceAccountToken is not false", sa.Metadata.Name)
				}
			}
		})
	}
}

func checkDeployment(t *testing.T, m manifests, d deployment, wantOthers bool) {
	pod := d.Spec.Template.Spec
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels", k, v)
		}
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g <= drainGraceSeconds {
		t.Errorf("terminationGracePeriodSeconds = %v, want more than opsd's %ds drain grace", deref(g), drainGraceSeconds)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("pod: automountServiceAccountToken is not false; opsd does not use the Kubernetes API")
	}

	var opsd []container
	others := 0
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		if c.Name == "opsd" || strings.Contains(c.Image, "/opsd:") {
			opsd = append(opsd, c)
		} else {
			others++
		}
	}
	if len(opsd) != 1 {
		t.Fatalf("%d opsd containers, want 1", len(opsd))
	}
	if wantOthers != (others > 0) {
		t.Errorf("%d non-opsd containers; want some: %v", others, wantOthers)
	}
	c := opsd[0]
	checkOpsdContainer(t, m, pod, c, d)
}

func checkOpsdContainer(t *testing.T, m manifests, pod podSpec, c container, d deployment) {
	// Port and probes.
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if !slices.Contains(mapValues(ports), opsdPort) {
		t.Errorf("opsd container does not declare containerPort %d", opsdPort)
	}
	for _, p := range []struct {
		name string
		pr   *probe
		path string
	}{
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		{"startupProbe", c.StartupProbe, "/healthz"},
	} {
		if p.pr == nil || p.pr.HTTPGet == nil {
			t.Errorf("opsd %s: want an httpGet probe on %s", p.name, p.path)
			continue
		}
		if p.pr.HTTPGet.Path != p.path {
			t.Errorf("opsd %s path = %q, want %q", p.name, p.pr.HTTPGet.Path, p.path)
		}
		if port := resolvePort(p.pr.HTTPGet.Port, ports); port != opsdPort {
			t.Errorf("opsd %s port %q resolves to %d, want %d", p.name, p.pr.HTTPGet.Port.Value, port, opsdPort)
		}
	}

	// Security context: the container's own setting wins over the pod's.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("opsd container has no securityContext")
	}
	psc := pod.SecurityContext
	if psc == nil {
		psc = &podSecurityContext{}
	}
	if v := firstBool(sc.RunAsNonRoot, psc.RunAsNonRoot); v == nil || !*v {
		t.Errorf("opsd: runAsNonRoot is not true")
	}
	if v := firstInt(sc.RunAsUser, psc.RunAsUser); v == nil || *v != 65532 {
		t.Errorf("opsd: runAsUser = %v, want 65532", deref(v))
	}
	if v := sc.ReadOnlyRootFilesystem; v == nil || !*v {
		t.Errorf("opsd: readOnlyRootFilesystem is not true")
	}
	if v := sc.AllowPrivilegeEscalation; v == nil || *v {
		t.Errorf("opsd: allowPrivilegeEscalation is not false")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("opsd: capabilities must drop ALL and add none")
	}
	sp := sc.SeccompProfile
	if sp == nil {
		sp = psc.SeccompProfile
	}
	if sp == nil || sp.Type != "RuntimeDefault" {
		t.Errorf("opsd: seccompProfile is not RuntimeDefault")
	}
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("opsd: no resources.requests.%s", r)
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Errorf("opsd: no resources.limits.memory")
	}

	// Volumes: where each mount path comes from.
	vols := map[string]volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	type mount struct {
		path     string
		vol      volume
		readOnly bool
	}
	var mounts []mount
	for _, vm := range c.VolumeMounts {
		v, ok := vols[vm.Name]
		if !ok {
			t.Errorf("opsd mounts volume %q, not defined in the pod", vm.Name)
			continue
		}
		mounts = append(mounts, mount{vm.MountPath, v, vm.ReadOnly})
	}
	// mountFor returns the mount holding file p (the longest prefix).
	mountFor := func(p string) (mount, bool) {
		best, ok := mount{}, false
		for _, mt := range mounts {
			if (p == mt.path || strings.HasPrefix(p, mt.path+"/")) && len(mt.path) > len(best.path) {
				best, ok = mt, true
			}
		}
		return best, ok
	}

	// The config file comes from a ConfigMap in the same file.
	configPath := "/etc/opsd/opsd.yaml"
	if i := slices.Index(c.Args, "--config"); i >= 0 && i+1 < len(c.Args) {
		configPath = c.Args[i+1]
	}
	mt, ok := mountFor(configPath)
	if !ok || mt.vol.ConfigMap == nil {
		t.Fatalf("opsd: %s is not mounted from a ConfigMap", configPath)
	}
	if !mt.readOnly {
		t.Errorf("opsd: ConfigMap mount %s is not readOnly", mt.path)
	}
	cm, ok := m.configMaps[mt.vol.ConfigMap.Name]
	if !ok {
		t.Fatalf("opsd: ConfigMap %q is not defined in the file", mt.vol.ConfigMap.Name)
	}
	key := strings.TrimPrefix(configPath, mt.path+"/")
	raw, ok := cm.Data[key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q for %s", cm.Metadata.Name, key, configPath)
	}
	var cfg opsdConfig
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatalf("ConfigMap %s: %s does not parse as YAML: %v", cm.Metadata.Name, key, err)
	}

	if cfg.Server.Listen != fmt.Sprintf("0.0.0.0:%d", opsdPort) {
		t.Errorf("opsd.yaml server.listen = %q, want 0.0.0.0:%d (probes come over the pod IP)", cfg.Server.Listen, opsdPort)
	}
	if cfg.State.Postgres == "" && (d.Spec.Replicas == nil || *d.Spec.Replicas != 1) {
		t.Errorf("replicas = %v with SQLite state; only 1 replica may own data_dir (more need state.postgres)", deref(d.Spec.Replicas))
	}

	// data_dir and local targets live on writable volumes; data_dir on a PVC.
	writable := map[string]string{"data_dir": cfg.DataDir}
	for name, tg := range cfg.Targets {
		if tg.Type == "local" {
			writable["target "+name] = tg.Path
		}
	}
	for what, p := range writable {
		mt, ok := mountFor(p)
		switch {
		case !ok:
			t.Errorf("opsd.yaml %s %s is not on a mounted volume (the root filesystem is read-only)", what, p)
		case mt.readOnly:
			t.Errorf("opsd.yaml %s %s is on a read-only mount", what, p)
		case what == "data_dir" && mt.vol.PersistentVolumeClaim == nil:
			t.Errorf("data_dir %s is not on a PersistentVolumeClaim: state and the audit log would die with the pod", p)
		case mt.vol.PersistentVolumeClaim != nil:
			if _, ok := m.pvcs[mt.vol.PersistentVolumeClaim.ClaimName]; !ok {
				t.Errorf("PVC %q is not defined in the file", mt.vol.PersistentVolumeClaim.ClaimName)
			}
		}
	}
	if mt, ok := mountFor(cfg.DataDir); ok && mt.vol.PersistentVolumeClaim != nil && d.Spec.Strategy.Type != "Recreate" {
		t.Errorf("strategy = %q; with data_dir on a ReadWriteOnce PVC and its lock, want Recreate", d.Spec.Strategy.Type)
	}

	// Every secret file the config names comes from a read-only Secret volume
	// (mode 0400) that holds that key.
	secretFiles := map[string]string{"audit.signing_key_file": cfg.Audit.SigningKeyFile}
	if cfg.Audit.SigningKeyFile != "" {
		secretFiles["audit signing key .hmac"] = cfg.Audit.SigningKeyFile + ".hmac"
		secretFiles["audit signing key .pub"] = cfg.Audit.SigningKeyFile + ".pub"
	}
	if len(cfg.Server.Tokens) == 0 {
		t.Errorf("opsd.yaml: no server.tokens")
	}
	for _, tok := range cfg.Server.Tokens {
		if !slices.Contains([]string{"viewer", "operator", "admin"}, tok.Role) {
			t.Errorf("token %s: role %q", tok.Name, tok.Role)
		}
		if tok.SHA256File == "" {
			t.Errorf("token %s: want sha256_file from the Secret, not an inline hash", tok.Name)
			continue
		}
		secretFiles["token "+tok.Name] = tok.SHA256File
	}
	for _, fm := range fileRef.FindAllStringSubmatch(raw, -1) {
		secretFiles["${file:"+fm[1]+"}"] = fm[1]
	}
	checkedVolumes := map[string]bool{}
	for what, p := range secretFiles {
		mt, ok := mountFor(p)
		if !ok || mt.vol.Secret == nil {
			t.Errorf("opsd.yaml %s = %s is not mounted from a Secret", what, p)
			continue
		}
		if !checkedVolumes[mt.vol.Name] {
			checkedVolumes[mt.vol.Name] = true
			if !mt.readOnly {
				t.Errorf("Secret mount %s is not readOnly", mt.path)
			}
			if dm := mt.vol.Secret.DefaultMode; dm == nil || *dm != 0o400 {
				t.Errorf("Secret volume %s: defaultMode = %o, want 0400", mt.vol.Name, deref(dm))
			}
		}
		s, ok := m.secrets[mt.vol.Secret.SecretName]
		if !ok {
			t.Errorf("Secret %q is not defined in the file", mt.vol.Secret.SecretName)
			continue
		}
		if k := strings.TrimPrefix(p, mt.path+"/"); !s.has(k) {
			t.Errorf("opsd.yaml %s = %s: Secret %s has no key %q", what, p, s.Metadata.Name, k)
		}
	}
	if pod.SecurityContext == nil || pod.SecurityContext.FSGroup == nil || *pod.SecurityContext.FSGroup != 65532 {
		t.Errorf("pod fsGroup is not 65532: the 0400 Secret files and the PVC would not be readable by UID 65532")
	}

	// ${NAME} in the config must be set in the container's environment, and
	// secretKeyRefs must point at Secrets in the file (unless optional).
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && !e.ValueFrom.SecretKeyRef.Optional {
			r := e.ValueFrom.SecretKeyRef
			if s, ok := m.secrets[r.Name]; !ok || !s.has(r.Key) {
				t.Errorf("env %s: Secret %s key %s is not defined in the file", e.Name, r.Name, r.Key)
			}
		}
	}
	for _, em := range envRef.FindAllStringSubmatch(raw, -1) {
		if !env[em[1]] {
			t.Errorf("opsd.yaml uses ${%s}, not set in the opsd container's env", em[1])
		}
	}
}

func checkService(t *testing.T, m manifests, d deployment) {
	if len(m.services) != 1 {
		t.Fatalf("%d Services, want 1", len(m.services))
	}
	s := m.services[0]
	if s.Spec.Type != "" && s.Spec.Type != "ClusterIP" {
		t.Errorf("Service %s type = %q, want ClusterIP", s.Metadata.Name, s.Spec.Type)
	}
	for k, v := range s.Spec.Selector {
		if d.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the Deployment's pods", k, v)
		}
	}
	ports := map[string]int{}
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
	}
	if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Port != opsdPort || resolvePort(s.Spec.Ports[0].TargetPort, ports) != opsdPort {
		t.Errorf("Service %s ports = %+v, want port %d to container port %d", s.Metadata.Name, s.Spec.Ports, opsdPort, opsdPort)
	}
}

// resolvePort resolves an int-or-string port against named container ports.
func resolvePort(n yaml.Node, named map[string]int) int {
	var i int
	if err := n.Decode(&i); err == nil {
		return i
	}
	return named[n.Value]
}

func firstBool(vs ...*bool) *bool {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

func firstInt(vs ...*int64) *int64 {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

// deref formats an optional value for error messages.
func deref[T any](p *T) any {
	if p == nil {
		return "unset"
	}
	return *p
}

func mapValues(m map[string]int) []int {
	var out []int
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/config"
)

// No Docker engine runs where the tests run, so docker-compose.yml and the
// Dockerfile are checked by reading them: every file they mount or copy
// exists, every walhook command they run parses, the config the image
// carries loads with the environment compose gives it, and the receiver the
// subscribe step registers is allowed and subscribed to real event types.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	root := filepath.Join("..", "..")
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{"postgres", "setup", "walhook", "receiver", "subscribe"} {
		if _, ok := compose.Services[name]; !ok {
			t.Errorf("docker-compose.yml: service %s missing", name)
		}
	}
	tagged := regexp.MustCompile(`^[^:]+:[0-9][^:]*$`)
	for name, s := range compose.Services {
		if s.Image != "" && s.Image != "walhook:local" && !tagged.MatchString(s.Image) {
			t.Errorf("service %s: image %q is not pinned to a version tag", name, s.Image)
		}
		for _, v := range s.Volumes {
			if src, _, ok := strings.Cut(v, ":"); ok && strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			}
		}
	}

	// The Dockerfile copies the sample config to /etc/walhook/walhook.yaml.
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	copyRE := regexp.MustCompile(`(?m)^COPY\s+(testdata/\S+)\s+/etc/walhook/walhook.yaml$`)
	m := copyRE.FindSubmatch(df)
	if m == nil {
		t.Fatal("Dockerfile: no COPY of a sample config to /etc/walhook/walhook.yaml")
	}
	cfgPath := filepath.Join(root, string(m[1]))
	for _, from := range regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllSubmatch(df, -1) {
		if !tagged.MatchString(string(from[1])) {
			t.Errorf("Dockerfile: base image %s is not pinned", from[1])
		}
	}

	// Each walhook service's command parses and its config loads with the
	// service's environment (compose's ${X:-default} resolved as compose
	// does without an .env file).
	composeVar := regexp.MustCompile(`\$\{([A-Z_]+):-([^}]*)\}`)
	for _, name := range []string{"setup", "walhook"} {
		s := compose.Services[name]
		if len(s.Command) < 3 || s.Command[1] != "--config" || s.Command[2] != "/etc/walhook/walhook.yaml" {
			t.Fatalf("service %s: command %v does not name /etc/walhook/walhook.yaml", name, s.Command)
		}
		env := map[string]string{}
		for k, v := range s.Environment {
			env[k] = composeVar.ReplaceAllString(v, "$2")
		}
		cfg, err := config.Load(cfgPath, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		if err != nil {
			t.Fatalf("service %s: config does not load with its environment: %v", name, err)
		}
		if name == "walhook" {
			if cfg.API.Listen != "0.0.0.0:8080" {
				t.Errorf("walhook service: api.listen %q, want 0.0.0.0:8080 so the published port reaches it", cfg.API.Listen)
			}
			if !contains(cfg.Delivery.Allow, "receiver") {
				t.Errorf("walhook service: delivery.allow %v does not allow the receiver service", cfg.Delivery.Allow)
			}
			checkSubscription(t, compose.Services["subscribe"].Command, cfg)
		}
	}
	if c := compose.Services["receiver"].Command; len(c) == 0 || c[0] != "receive" {
		t.Errorf("receiver service: command %v, want walhook receive", c)
	}
}

// checkSubscription reads the JSON body the subscribe service posts and
// checks its event filters against the sample's catalog.
func checkSubscription(t *testing.T, cmd []string, cfg *config.Config) {
	t.Helper()
	body := regexp.MustCompile(`-d "(\{.*\})"`).FindStringSubmatch(strings.Join(cmd, " "))
	if body == nil {
		t.Fatal("subscribe service: no -d JSON body")
	}
	var req struct {
		URL    string   `json:"url"`
		Events []string `json:"events"`
	}
	js := strings.NewReplacer(`\"`, `"`, "$$RECEIVER_SECRET", "whsec_x").Replace(body[1])
	if err := json.Unmarshal([]byte(js), &req); err != nil {
		t.Fatalf("subscribe service: body %s: %v", js, err)
	}
	if !strings.HasPrefix(req.URL, "http://receiver:") {
		t.Errorf("subscribe service: url %q, want the receiver service", req.URL)
	}
	types := map[string]bool{}
	for _, e := range cfg.Catalog() {
		types[e.Type] = true
		types[e.Type[:strings.LastIndex(e.Type, ".")]+".*"] = true
	}
	for _, e := range req.Events {
		if !types[e] {
			t.Errorf("subscribe service: event filter %q matches nothing in the catalog", e)
		}
	}
	if len(req.Events) == 0 {
		t.Error("subscribe service: no event filters")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

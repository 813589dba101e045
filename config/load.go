package config

import "errors"

// Load reads, expands, decodes, defaults and validates a config file.
// lookupEnv is os.LookupEnv in production.
func Load(path string, lookupEnv func(string) (string, bool)) (*Config, error) {
	return nil, errors.New("config: not yet built")
}

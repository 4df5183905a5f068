# dns-provider: the cluster's API name as an A record set, through the hashicorp/dns provider
# with RFC 2136 dynamic updates signed with TSIG, against the site's DNS server (the same kind
# of server Tempered's own DNS steps update). An example for sites with providers: it needs the
# provider in a mirror (see README.md); Tempered's tests do not apply it.
#
#   {"name": "api-dns", "module": "dns-provider", "stage": "after-ready",
#    "variables": {"server": "192.0.2.53", "zone": "example.test.", "name": "{{ cluster.name }}-api",
#                  "addresses": "{{ members | selectattr('role', 'in', ['master-prime', 'master']) | map(attribute='address') | list | tojson }}"}}
#
# The TSIG secret is a sensitive variable that never goes in the cluster spec: set
# TF_VAR_key_secret in the worker's environment (tempered.env, readable by the service only);
# the runner passes the worker's TF_VAR_* through to every run.

terraform {
  required_providers {
    dns = {
      source  = "hashicorp/dns"
      version = "~> 3.4"
    }
  }
}

variable "server" {
  type        = string
  description = "The DNS server that takes the updates (address or name)."
}

variable "port" {
  type    = number
  default = 53
}

variable "zone" {
  type        = string
  description = "The zone, fully qualified with its trailing dot: example.test."
}

variable "name" {
  type        = string
  description = "The record's name in the zone, e.g. the cluster's API name."
}

variable "addresses" {
  type        = list(string)
  description = "The addresses the name resolves to."
}

variable "ttl" {
  type    = number
  default = 60
}

variable "key_name" {
  type        = string
  default     = "tempered."
  description = "The TSIG key's name, fully qualified."
}

variable "key_algorithm" {
  type    = string
  default = "hmac-sha256"
}

variable "key_secret" {
  type        = string
  sensitive   = true
  description = "The TSIG key's secret (base64): from TF_VAR_key_secret in the worker's environment."
}

provider "dns" {
  update {
    server        = var.server
    port          = var.port
    key_name      = var.key_name
    key_algorithm = var.key_algorithm
    key_secret    = var.key_secret
  }
}

resource "dns_a_record_set" "api" {
  zone      = var.zone
  name      = var.name
  addresses = var.addresses
  ttl       = var.ttl
}

output "fqdn" {
  value = "${var.name}.${var.zone}"
}

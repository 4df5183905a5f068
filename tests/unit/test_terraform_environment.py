"""activities/terraform.py: what Terraform takes from the worker's environment (issue 16
review, item 5): the site's TLS trust and proxies (the API behind a private CA), its TF_VAR_*,
nothing else."""

from activities.terraform import site_environment


def test_tls_and_proxy_settings_pass_through_and_nothing_else():
    worker = {
        "SSL_CERT_FILE": "/etc/site/ca.pem", "SSL_CERT_DIR": "/etc/site/certs", "REQUESTS_CA_BUNDLE": "/etc/site/ca.pem",
        "HTTPS_PROXY": "http://proxy:3128", "http_proxy": "http://proxy:3128", "no_proxy": "localhost",
        "HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "127.0.0.1",
        "TF_VAR_tsig": "s3cret", "TEMPERED_DATABASE_URL": "postgresql://x", "AWS_SECRET_ACCESS_KEY": "no",
    }
    passed = site_environment(worker)
    assert passed == {k: v for k, v in worker.items() if k not in ("TEMPERED_DATABASE_URL", "AWS_SECRET_ACCESS_KEY")}

//! URLs given as inputs (`health-url`, `environment-url`): checked, expanded per host,
//! and never printed with their credentials.

use url::Url;

/// `{host}` in `health-url` becomes the host, bracketed when it is an IPv6 address.
pub(super) fn expand_host(template: &str, host: &str) -> String {
    if host.contains(':') {
        template.replace("{host}", &format!("[{host}]"))
    } else {
        template.replace("{host}", host)
    }
}

/// The password of a URL's userinfo, as sent and as written (percent-encoded).
pub(super) fn url_password(u: &Url) -> Vec<String> {
    // `https://TOKEN@host` carries its secret as the user name; a short user name
    // (`admin`) is no secret, and masking it would garble every line that says it.
    let user = Some(u.username()).filter(|n| n.len() >= 8);
    let mut out = Vec::new();
    for part in [u.password(), user]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
    {
        let decoded = url::form_urlencoded::parse(format!("p={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        out.push(part.to_string());
        if !decoded.is_empty() && decoded != part {
            out.push(decoded);
        }
    }
    out
}

/// A URL fit to print: any `user:password@` is replaced by `***@`.
pub(crate) fn redact_url(u: &Url) -> String {
    if u.username().is_empty() && u.password().is_none() {
        return u.to_string();
    }
    let mut shown = u.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("***");
    shown.to_string()
}

/// An `http://` or `https://` URL with a host.
pub(super) fn check_http_url(v: &str) -> Result<Url, String> {
    // The value is echoed in the error: never with its credentials.
    let shown = without_userinfo(v);
    match Url::parse(v) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => Ok(u),
        Ok(u) => Err(format!(
            "`{shown}` must be an http:// or https:// URL with a host, not `{}:`",
            u.scheme()
        )),
        Err(_) => Err(format!("`{shown}` is not a URL with a scheme")),
    }
}

/// `scheme://user:pw@rest` as `scheme://***@rest`, by text: for a value that may not parse.
fn without_userinfo(v: &str) -> String {
    let Some((scheme, rest)) = v.split_once("://") else {
        return v.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => v.to_string(),
    }
}

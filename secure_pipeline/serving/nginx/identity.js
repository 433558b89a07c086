// Client identity of the inference gateway: the SPIFFE-style URI SAN of the verified client
// certificate (spiffe://<trust domain>/<name>).
//
// Stock nginx 1.22 has no variable for a certificate's subject alternative names, so this
// njs module reads the DER certificate ($ssl_client_raw_cert) and walks just enough ASN.1 to
// find the SubjectAlternativeName extension. It is deliberately strict: anything unexpected
// (no verified certificate, malformed DER, no URI SAN, more than one URI SAN as the X509-SVID
// rules forbid, non-printable bytes) yields the empty string, which the gateway's maps treat as
// "no identity" and refuse. Chain verification is nginx's job (ssl_verify_client on); this
// only runs for requests whose certificate already verified.

var SAN_OID = [0x55, 0x1d, 0x11]; // 2.5.29.17 subjectAltName

function tlv(buf, pos, end) {
    if (pos + 2 > end) {
        throw new Error('truncated');
    }
    var tag = buf[pos];
    var len = buf[pos + 1];
    var p = pos + 2;
    if (len & 0x80) {
        var n = len & 0x7f;
        if (n < 1 || n > 3 || p + n > end) {
            throw new Error('bad length');
        }
        len = 0;
        for (var i = 0; i < n; i++) {
            len = len * 256 + buf[p + i];
        }
        p += n;
    }
    if (p + len > end) {
        throw new Error('truncated');
    }
    return {tag: tag, start: p, end: p + len};
}

function children(buf, node) {
    var out = [];
    var pos = node.start;
    while (pos < node.end) {
        var child = tlv(buf, pos, node.end);
        out.push(child);
        pos = child.end;
    }
    return out;
}

function isSanOid(buf, node) {
    if (node.tag !== 0x06 || node.end - node.start !== SAN_OID.length) {
        return false;
    }
    for (var i = 0; i < SAN_OID.length; i++) {
        if (buf[node.start + i] !== SAN_OID[i]) {
            return false;
        }
    }
    return true;
}

function printable(buf, start, end) {
    var s = '';
    for (var i = start; i < end; i++) {
        var c = buf[i];
        if (c < 0x21 || c > 0x7e) {
            throw new Error('non-printable URI');
        }
        s += String.fromCharCode(c);
    }
    return s;
}

function uriSans(der) {
    var cert = tlv(der, 0, der.length);
    if (cert.tag !== 0x30) {
        throw new Error('not a certificate');
    }
    var tbs = children(der, cert)[0];
    if (!tbs || tbs.tag !== 0x30) {
        throw new Error('no tbsCertificate');
    }
    var uris = [];
    var sanSeen = 0;
    children(der, tbs).forEach(function (field) {
        if (field.tag !== 0xa3) { // [3] extensions
            return;
        }
        var list = children(der, field)[0];
        children(der, list).forEach(function (ext) {
            var parts = children(der, ext);
            if (!isSanOid(der, parts[0])) {
                return;
            }
            sanSeen += 1;
            var value = parts[parts.length - 1];
            if (value.tag !== 0x04) {
                throw new Error('SAN is not an OCTET STRING');
            }
            var names = tlv(der, value.start, value.end);
            if (names.tag !== 0x30) {
                throw new Error('SAN is not a SEQUENCE');
            }
            children(der, names).forEach(function (name) {
                if (name.tag === 0x86) { // [6] uniformResourceIdentifier
                    uris.push(printable(der, name.start, name.end));
                }
            });
        });
    });
    if (sanSeen > 1) {
        throw new Error('duplicate SAN extension');
    }
    return uris;
}

function spiffeId(r) {
    if (r.variables.ssl_client_verify !== 'SUCCESS') {
        return '';
    }
    var pem = r.variables.ssl_client_raw_cert || '';
    var b64 = pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, '');
    if (!b64.length || /[^A-Za-z0-9+\/=]/.test(b64)) {
        return '';
    }
    try {
        var uris = uriSans(Buffer.from(b64, 'base64'));
        if (uris.length !== 1 || uris[0].indexOf('spiffe://') !== 0) {
            return '';
        }
        return uris[0];
    } catch (e) {
        r.warn('client certificate identity not readable: ' + e.message);
        return '';
    }
}

export default {spiffeId};

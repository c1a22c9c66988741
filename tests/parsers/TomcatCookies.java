// How Tomcat reads a request's Cookie fields (its default cookie processor,
// Rfc6265CookieProcessor, as a Request's getCookies() runs it), for
// tests/cookie_parsers.rs. The same class runs on Tomcat 9 and 10: the
// classpath picks the Tomcat.
//
// Reads one request per line on stdin: its Cookie fields, each written as
// `x` and its bytes in hex, separated by spaces. Answers each line with one
// JSON line, {"readings": [{"how": ..., "cookies": [[name, value], ...]}]}.
// Tomcat keeps repeated Cookie fields apart, and so does this.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;

import org.apache.tomcat.util.buf.MessageBytes;
import org.apache.tomcat.util.http.MimeHeaders;
import org.apache.tomcat.util.http.Rfc6265CookieProcessor;
import org.apache.tomcat.util.http.ServerCookie;
import org.apache.tomcat.util.http.ServerCookies;

public class TomcatCookies {
    public static void main(String[] args) throws Exception {
        // Tomcat logs each cookie it skips; the harness reads stdout only
        java.util.logging.LogManager.getLogManager().reset();
        Rfc6265CookieProcessor processor = new Rfc6265CookieProcessor();
        String how = "tomcat " + org.apache.catalina.util.ServerInfo.getServerNumber();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.ISO_8859_1));
        String line;
        while ((line = in.readLine()) != null) {
            MimeHeaders headers = new MimeHeaders();
            for (String t : line.trim().split(" +")) {
                if (t.isEmpty()) {
                    continue;
                }
                byte[] field = HexFormat.of().parseHex(t.substring(1));
                headers.addValue("Cookie").setBytes(field, 0, field.length);
            }
            ServerCookies cookies = new ServerCookies(4);
            StringBuilder out = new StringBuilder("{\"readings\":[{\"how\":");
            json(out, how);
            try {
                processor.parseCookieHeader(headers, cookies);
            } catch (RuntimeException e) {
                // Tomcat 9 fails on a field that ends after "$Version=1":
                // the request fails, nothing is read
                out.append(",\"error\":");
                json(out, e.toString());
                answer(out.append("}]}"));
                continue;
            }
            out.append(",\"cookies\":[");
            for (int i = 0; i < cookies.getCookieCount(); i++) {
                ServerCookie c = cookies.getCookie(i);
                out.append(i == 0 ? "[" : ",[");
                json(out, text(c.getName(), processor));
                out.append(',');
                json(out, text(c.getValue(), processor));
                out.append(']');
            }
            answer(out.append("]}]}"));
        }
    }

    static void answer(StringBuilder line) {
        System.out.println(line);
        System.out.flush();
    }

    /** As Request.convertCookies turns them into strings. */
    static String text(MessageBytes b, Rfc6265CookieProcessor processor) {
        if (b.getType() == MessageBytes.T_BYTES) {
            b.getByteChunk().setCharset(processor.getCharset());
        }
        return b.toString();
    }

    static void json(StringBuilder out, String s) {
        out.append('"');
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20 || c > 0x7e) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        out.append('"');
    }
}

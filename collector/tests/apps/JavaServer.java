// Fixture server: GET /sleep/<ms>/<nonce> sleeps <ms> then answers 200; GET /ok/<nonce> 200;
// GET /chunked/<nonce> answers 200 with a chunked body of 6000 bytes.
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class JavaServer {
    public static void main(String[] args) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[0])), 128);
        server.createContext("/", exchange -> {
            String[] parts = exchange.getRequestURI().getPath().split("/");
            String body;
            if (parts.length >= 3 && parts[1].equals("sleep")) {
                int ms = Integer.parseInt(parts[2]);
                long t0 = System.nanoTime();
                try {
                    Thread.sleep(ms);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
                // How long the handler really slept.
                exchange.getResponseHeaders().set("X-Slept-Us", Long.toString((System.nanoTime() - t0) / 1000));
                body = "slept " + ms + "\n";

            } else if (parts.length >= 2 && parts[1].equals("ok")) {
                body = "ok\n";
            } else if (parts.length >= 2 && parts[1].equals("chunked")) {
                // Length 0 asks the JDK server for chunked encoding.
                exchange.sendResponseHeaders(200, 0);
                try (OutputStream out = exchange.getResponseBody()) {
                    out.write("a".repeat(1000).getBytes(StandardCharsets.UTF_8));
                    out.flush();
                    out.write("b".repeat(2000).getBytes(StandardCharsets.UTF_8));
                    out.flush();
                    out.write("c".repeat(3000).getBytes(StandardCharsets.UTF_8));
                }
                return;
            } else {
                exchange.sendResponseHeaders(404, -1);
                exchange.close();
                return;
            }
            byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(200, bytes.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(bytes);
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
    }
}
